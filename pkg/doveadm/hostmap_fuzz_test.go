package doveadm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzParseHostMap: whatever the host-map file holds, the start gets the
// map or an error that says it is the host map's, and no error (of the
// file, or of Validate for either transport) shows a secret the map's
// variables and files hold.
func FuzzParseHostMap(f *testing.F) {
	for _, s := range []string{
		`{"mail-a": {"url": "http://mail-a:8081/doveadm/v1", "destination": "tcp:mail-b:12345", "password_file": "/run/pw"}}`,
		`{"mail-a": {"url": "https://[2001:db8::1]:8081/doveadm/v1", "destination": "tcp:[2001:db8::2]:12345", "api_key_env": "KEY"}}`,
		`{"mail-a": {"url": "http://a/", "destination": "mail-b:12345", "user": "doveadm", "config": "/etc/dovecot/a.conf"}}`,
		`{"mail-a": {"url": "http://a/", "destination": "tcp:b:1", "password_env": "P", "password_file": "/run/pw"}}`,
		`{"mail-a": {"url": "http://a/", "destination": "tcp:b:1", "password_file": "/run/empty"}}`,
		`{"mail-a": {"url": "http://a/", "destination": "tcp:b:1", "password_file": "/run/missing"}}`,
		`{"mail-a": {"url": "http://u:pw@a/", "destination": "-oProxyCommand=x"}}`,
		`{"MAIL-A": {}, "mail-a": {}}`,
		`{"": {}}`, `{"::1": {}}`, `{"mail a": {}}`,
		`{"a": {"password": "x"}}`,
		`[1,2]`, `{}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	const secret = "Zq9-secret"
	getenv := func(k string) string {
		if k == "UNSET" {
			return ""
		}
		return secret + "-env-" + k
	}
	readFile := func(name string) ([]byte, error) {
		switch name {
		case "/run/missing":
			return nil, errors.New("open /run/missing: no such file or directory")
		case "/run/empty":
			return []byte("\n"), nil
		}
		return []byte(secret + "-file\n"), nil
	}
	def := Endpoint{URL: "http://d:8081/doveadm/v1", Destination: "tcp:r:12345", Password: secret + "-default"}
	f.Fuzz(func(t *testing.T, data []byte) {
		if bytes.Contains(data, []byte("Zq9")) || bytes.Contains(data, []byte(`\u`)) {
			t.Skip("the map itself spells the secret")
		}
		m, err := parseHostMap(data, def, getenv, readFile)
		if err != nil {
			for line := range strings.SplitSeq(err.Error(), "\n") {
				if !strings.HasPrefix(line, "host map: ") {
					t.Fatalf("error line %q does not say it is the host map's", line)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error shows a secret: %v", err)
			}
			return
		}
		for _, h := range m.Hosts() {
			e := m.Resolve(h)
			if !strings.EqualFold(e.Name, h) {
				t.Fatalf("host %q resolves to the entry of %q", h, e.Name)
			}
			if e.Password == "" && e.APIKey == "" {
				t.Fatalf("host %q has no credentials, where the default has", h)
			}
		}
		for _, tr := range []string{TransportHTTP, TransportExec} {
			if err := m.Validate(tr); err != nil && strings.Contains(err.Error(), secret) {
				t.Fatalf("Validate(%s) shows a secret: %v", tr, err)
			}
		}
	})
}
