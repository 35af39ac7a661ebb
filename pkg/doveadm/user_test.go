package doveadm

import (
	"strings"
	"testing"
)

func TestValidateUser(t *testing.T) {
	tests := []struct {
		user   string
		reason string // part of the error; empty: valid
	}{
		{"u1", ""},
		{"first.last@example.org", ""},
		{"jürgen@example.de", ""},
		{"a b; rm -rf /", ""}, // harmless: never seen by a shell
		{"alice ", "white space"},
		{" alice", "white space"},
		{"alice\u00a0", "white space"},
		{strings.Repeat("a", MaxUserLen), ""},
		{"", "empty"},
		{strings.Repeat("a", MaxUserLen+1), "exceeds"},
		{"-oProxyCommand=x", "starts with '-'"},
		{"-", "starts with '-'"},
		{"u1\nX-Injected: 1", "control character"},
		{"u1\r", "control character"},
		{"u\x00", "control character"},
		{"u\x7f", "control character"},
		{"u\u0085", "control character"},
		{"u\u2028", "control character"},
		{"*", "wildcard"},
		{"u?", "wildcard"},
		{"\xff\xfe", "UTF-8"},
		// What a JSON decoder makes of invalid UTF-8 or a lone surrogate.
		{"u\ufffd", "U+FFFD"},
		{"\ufffd", "lone surrogate"},
	}
	for _, tt := range tests {
		err := ValidateUser(tt.user)
		if tt.reason == "" {
			if err != nil {
				t.Errorf("ValidateUser(%q) = %v, want valid", tt.user, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("ValidateUser(%q) = %v, want an error about %q", tt.user, err, tt.reason)
		}
	}
}
