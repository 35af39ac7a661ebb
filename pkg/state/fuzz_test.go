package state_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// FuzzConnValidate builds Redis URLs around a password (in the user
// information and as the Sentinel URL's password parameter) from fuzzed
// parts. Checking them never panics, and neither the error nor the
// redacted URL ever shows the password.
func FuzzConnValidate(f *testing.F) {
	f.Add(uint8(0), "127.0.0.1:6379", "/0", "", "s3cret")
	f.Add(uint8(1), "redis.example:6380", "/1", "dial_timeout=3s", "p@ss:word")
	f.Add(uint8(0), "127.0.0.1:26379", "/0", "master_name=dw&addr=127.0.0.2:26379", "pw")
	f.Add(uint8(0), "127.0.0.1:26379", "/0", "master_name=dw&bogus=1", "pw")
	f.Add(uint8(2), "", "/run/redis.sock", "db=%zz", "x y")
	f.Add(uint8(0), "h", "/zero", "pool_size=x", "%41")
	f.Fuzz(func(t *testing.T, scheme uint8, host, path, query, password string) {
		const marker = "Zq9x"
		secret := marker + password
		u := url.URL{Scheme: []string{"redis", "rediss", "unix", "http"}[scheme%4], Host: host, Path: path,
			User: url.UserPassword("dw", secret), RawQuery: query}
		if query != "" {
			u.RawQuery += "&"
		}
		u.RawQuery += "password=" + url.QueryEscape(secret)
		raw := u.String()
		if shown := config.RedactURL(raw); strings.Contains(shown, marker) {
			t.Fatalf("RedactURL(%q) = %q shows the password", raw, shown)
		}
		if err := (state.Conn{URL: raw}).Validate(); err != nil && strings.Contains(err.Error(), marker) {
			t.Fatalf("Validate(%q): %v shows the password", raw, err)
		}
	})
}
