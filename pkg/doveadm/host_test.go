package doveadm

import (
	"strings"
	"testing"
)

func TestValidateHost(t *testing.T) {
	for _, ok := range []string{"", "mail-a.example.org", "mail-a:8080", "mail_b", "fe80::1"} {
		if err := ValidateHost(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	// An address with a colon after a digit is no URI reference, which
	// ingest needs for a CloudEvent's source: a host map entry so named
	// could never match an event.
	for _, bad := range []string{"mail a", "a/../b", "a\nb", strings.Repeat("a", 254), "10.0.0.1:8080", "::1", "2001:db8::1"} {
		if err := ValidateHost(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
