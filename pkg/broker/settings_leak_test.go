package broker

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestSettings_ARefusedSubscriberShowsNoPasswordPart: a password may hold
// ',' or '=' (both are allowed unescaped in a URL's user information); the
// pieces the comma split or the '=' cut make must not show in the refusal.
func TestSettings_ARefusedSubscriberShowsNoPasswordPart(t *testing.T) {
	for _, bad := range []string{
		"a=http://u:12,s3cret@h/", // split at the comma: "http://u:12" parses, "s3cret@h/" has no '='
		"http://u:s3cret=x@h/",    // no name: the '=' in the password is taken as the separator
	} {
		var s Settings
		fs := flag.NewFlagSet("broker", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		s.RegisterFlags(fs)
		err := errors.Join(fs.Parse([]string{"--subscriber", bad}), s.Validate())
		for _, part := range []string{"s3cret"} {
			if strings.Contains(bad, part) && strings.Contains(fmt.Sprint(err), part) {
				t.Errorf("%q: the refusal shows %q of the password: %v", bad, part, err)
			}
		}
	}
}
