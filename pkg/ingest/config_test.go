package ingest

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoad_SecretFilesThatCannotAuthenticate: a token or password file
// that is empty (or only white space), or a token no client can send
// (white space or a control character inside or at the ends), stops the
// start with an error naming the setting: otherwise authentication would
// be silently off, or nothing would authenticate. The secret itself is
// never shown.
func TestLoad_SecretFilesThatCannotAuthenticate(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"empty token file":       {[]string{"--auth-token-file", file("t0", "")}, "auth-token-file " + filepath.Join(dir, "t0") + ": empty"},
		"newline token file":     {[]string{"--auth-token-file", file("t1", "\n")}, "auth-token-file " + filepath.Join(dir, "t1") + ": empty"},
		"blank token file":       {[]string{"--auth-token-file", file("t2", "  \t\n")}, "auth-token-file " + filepath.Join(dir, "t2") + ": empty"},
		"trailing space":         {[]string{"--auth-token-file", file("t3", "hidden-tok \n")}, "auth-token-file " + filepath.Join(dir, "t3") + ": the token contains white space"},
		"leading space":          {[]string{"--auth-token-file", file("t4", " hidden-tok\n")}, "white space"},
		"inner space":            {[]string{"--auth-token-file", file("t5", "hidden tok\n")}, "white space"},
		"two lines":              {[]string{"--auth-token-file", file("t6", "hidden-tok\nmore\n")}, "white space"},
		"control character":      {[]string{"--auth-token-file", file("t7", "hidden-tok\x00\n")}, "control character"},
		"token flag":             {[]string{"--auth-token", "hidden tok"}, "auth-token: the token contains white space"},
		"empty password file":    {[]string{"--auth-user", "dovecot", "--auth-password-file", file("p0", "")}, "auth-password-file " + filepath.Join(dir, "p0") + ": empty"},
		"newline password file":  {[]string{"--auth-user", "dovecot", "--auth-password-file", file("p1", "\r\n")}, "auth-password-file " + filepath.Join(dir, "p1") + ": empty"},
		"password file, no user": {[]string{"--auth-password-file", file("p2", "")}, "auth-password-file " + filepath.Join(dir, "p2") + ": empty"},
		// RFC 7617: a Basic user-id holds no colon. Dovecot's exporter
		// URL http://dove:cot:PASSWORD@... sends user "dove", and Go's
		// BasicAuth reads the user up to the first colon: never "dove:cot".
		"user with a colon": {[]string{"--auth-user", "dove:cot", "--auth-password", "hidden-pw"}, `auth-user "dove:cot": a colon`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(flag.NewFlagSet("ingest", flag.ContinueOnError),
				append([]string{"--broker-url", "http://127.0.0.1:1"}, tc.args...), func(string) string { return "" })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want an error with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hidden") {
				t.Errorf("the error shows the secret: %v", err)
			}
		})
	}
	// What authenticates is still taken: a token file ending in a newline
	// (CRLF too), and a password with spaces (Basic carries them).
	for _, args := range [][]string{
		{"--auth-token-file", file("ok1", "tok-123\n")},
		{"--auth-token-file", file("ok2", "tok-123\r\n")},
		{"--auth-user", "dovecot", "--auth-password-file", file("ok3", "pass word \n")},
	} {
		c, err := Load(flag.NewFlagSet("ingest", flag.ContinueOnError),
			append([]string{"--broker-url", "http://127.0.0.1:1"}, args...), func(string) string { return "" })
		if err != nil {
			t.Errorf("%v: %v", args, err)
			continue
		}
		o, err := c.HandlerOptions()
		if err != nil || (o.Token != "tok-123" && o.BasicPassword != "pass word ") {
			t.Errorf("%v: options %+v, %v", args, o, err)
		}
	}
}
