package broker

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestSettings_Flags(t *testing.T) {
	var s Settings
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s.RegisterFlags(fs)
	err := fs.Parse([]string{"--subscriber", "a=http://127.0.0.1:1/a", "--subscriber", "b=http://127.0.0.1:1/b,c=https://c.test/",
		"--queue-size", "5", "--workers", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := s.Subscribers.String(); got != "a=http://127.0.0.1:1/a,b=http://127.0.0.1:1/b,c=https://c.test/" {
		t.Errorf("subscribers %s", got)
	}
	o := s.Options()
	if o.QueueSize != 5 || o.Workers != 2 || o.DeliveryTimeout != DefaultDeliveryTimeout || len(o.Subscribers) != 3 {
		t.Errorf("options %+v", o)
	}
	cfg, err := s.Load()
	if err != nil || cfg.Broker != "dovewarden" {
		t.Fatalf("embedded manifests: %v %v", cfg, err)
	}
	for _, bad := range []string{"noequals", "=http://x", "a=relative/path", "a=ftp://x"} {
		var s Settings
		fs := flag.NewFlagSet("broker", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		s.RegisterFlags(fs)
		if err := fs.Set("subscriber", bad); err != nil {
			t.Errorf("Set(%q): %v, want the refusal from Validate", bad, err)
		}
		name, u, _ := strings.Cut(bad, "=")
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "subscriber") ||
			!strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), u) {
			t.Errorf("Validate after Set(%q): %v, want an error naming the setting and the value", bad, err)
		}
	}
}

// TestSettings_ARefusedSubscriberShowsNoPassword: the flag package quotes
// a value its Set refuses, whole, in its error and on its output.
func TestSettings_ARefusedSubscriberShowsNoPassword(t *testing.T) {
	for _, bad := range []string{"a=ftp://u:s3cret@h/", "http://u:s3cret@h/", "a=http://u:s3cret@h/,b=mailto:x?password=s3cret",
		// A password may hold ',' or '=' (both allowed unescaped in a
		// URL's user information): no piece the comma split or the '='
		// cut makes may show either.
		"a=http://u:12,s3cret@h/", // split at the comma: "s3cret@h/" has no '='
		"http://u:s3cret=x@h/",    // no name: the '=' in the password looks like the separator
	} {
		var s Settings
		fs := flag.NewFlagSet("broker", flag.ContinueOnError)
		var out strings.Builder
		fs.SetOutput(&out)
		s.RegisterFlags(fs)
		err := errors.Join(fs.Parse([]string{"--subscriber", bad}), s.Validate())
		if err == nil || !strings.Contains(err.Error(), "subscriber") {
			t.Errorf("%q: %v, want an error naming the setting", bad, err)
		}
		if strings.Contains(out.String()+fmt.Sprint(err), "s3cret") {
			t.Errorf("%q: the password shows: %v %s", bad, err, out.String())
		}
	}
}
