package doveadm

import (
	"strings"
	"testing"
)

func TestValidateHost(t *testing.T) {
	for _, ok := range []string{"", "mail-a.example.org", "10.0.0.1:8080", "mail_b"} {
		if err := ValidateHost(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"mail a", "a/../b", "a\nb", strings.Repeat("a", 254)} {
		if err := ValidateHost(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
