package config

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newSet() (*flag.FlagSet, *string, *time.Duration, *int) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s := fs.String("broker-url", "default", "")
	d := fs.Duration("send-budget", time.Second, "")
	n := fs.Int("send-retries", 3, "")
	return fs, s, d, n
}

func TestParse_FlagBeatsEnvBeatsDefault(t *testing.T) {
	fs, s, d, n := newSet()
	env := map[string]string{"DOVEWARDEN_BROKER_URL": "http://env", "DOVEWARDEN_SEND_BUDGET": "200ms"}
	if err := Parse(fs, []string{"--broker-url", "http://flag"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if *s != "http://flag" || *d != 200*time.Millisecond || *n != 3 {
		t.Errorf("got %q %v %d", *s, *d, *n)
	}
}

func TestParse_BadEnvNamesTheVariable(t *testing.T) {
	fs, _, _, _ := newSet()
	env := map[string]string{"DOVEWARDEN_SEND_BUDGET": "fast", "DOVEWARDEN_SEND_RETRIES": "x"}
	err := Parse(fs, nil, func(k string) string { return env[k] })
	if err == nil || !strings.Contains(err.Error(), "DOVEWARDEN_SEND_BUDGET") || !strings.Contains(err.Error(), "DOVEWARDEN_SEND_RETRIES") {
		t.Fatalf("error %v should name both variables", err)
	}
}

func TestSecret(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := Secret("auth-password", "", file); err != nil || v != "s3cret" {
		t.Errorf("from file: %q %v", v, err)
	}
	if v, err := Secret("auth-password", "direct", ""); err != nil || v != "direct" {
		t.Errorf("value: %q %v", v, err)
	}
	// One of them is stale: neither is taken quietly.
	if v, err := Secret("auth-password", "direct", file); err == nil || err.Error() != "auth-password and auth-password-file are both set: set one" {
		t.Errorf("value and file: %q, %v; want an error naming both", v, err)
	}
	if _, err := Secret("auth-password", "", file+".missing"); err == nil || !strings.Contains(err.Error(), "auth-password-file") {
		t.Errorf("missing file: %v", err)
	}
	// A Secret not mounted yet, or written empty: never "no password".
	for _, content := range []string{"", "\n", "\r\n", " \t\n"} {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if v, err := Secret("doveadm-password", "", file); err == nil || err.Error() != "doveadm-password-file "+file+": empty" {
			t.Errorf("file holding %q: %q, %v; want an error naming doveadm-password-file", content, v, err)
		}
	}
}

// TestSecret_FileTooLarge: a secret's file setting that names the wrong
// file (a log, a device like /dev/zero, which never ends) is refused with
// its setting named, after reading no more than MaxSecretFile bytes and
// one; it was read whole, and /dev/zero until the memory ran out.
func TestSecret_FileTooLarge(t *testing.T) {
	dir := t.TempDir()
	big, most := filepath.Join(dir, "big"), filepath.Join(dir, "max")
	if err := os.WriteFile(big, []byte(strings.Repeat("x", MaxSecretFile+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := Secret("doveadm-password", "", big)
	if err == nil || !strings.HasPrefix(err.Error(), "doveadm-password-file: "+big+": larger than") {
		t.Errorf("a file of %d bytes: %d bytes, %v; want an error naming doveadm-password-file and the file", MaxSecretFile+1, len(v), err)
	}
	if err := os.WriteFile(most, []byte(strings.Repeat("x", MaxSecretFile-1)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := Secret("auth-token", "", most); err != nil || len(v) != MaxSecretFile-1 {
		t.Errorf("a file of %d bytes: %d bytes, %v; want it read", MaxSecretFile, len(v), err)
	}
}

// TestSecret_ByteOrderMark: a secret file saved by an editor that puts a
// UTF-8 byte order mark first (Notepad, PowerShell's Out-File) reads as
// the secret alone; kept, the mark became part of the password or token,
// and authentication failed with nothing to say why.
func TestSecret_ByteOrderMark(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pw")
	for _, content := range []string{"\ufeffs3cret", "\ufeffs3cret\r\n", "\ufeffs3cret\n"} {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if v, err := Secret("auth-password", "", file); err != nil || v != "s3cret" {
			t.Errorf("file holding %q: %q, %v; want \"s3cret\"", content, v, err)
		}
	}
	// A mark and nothing else is as empty as no byte at all.
	for _, content := range []string{"\ufeff", "\ufeff\r\n"} {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if v, err := Secret("auth-token", "", file); err == nil || err.Error() != "auth-token-file "+file+": empty" {
			t.Errorf("file holding %q: %q, %v; want an error naming auth-token-file", content, v, err)
		}
	}
	// Only a mark at the start is one; elsewhere U+FEFF is the secret's.
	if err := os.WriteFile(file, []byte("s3\ufeffcret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := Secret("auth-password", "", file); err != nil || v != "s3\ufeffcret" {
		t.Errorf("a U+FEFF inside: %q, %v", v, err)
	}
}

func TestRedactURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{"redis://:s3cret@redis:6379/0", "redis://:xxxxx@redis:6379/0"},
		{"rediss://dw:s3cret@redis/0", "rediss://dw:xxxxx@redis/0"},
		{"redis://sentinel:26379/0?master_name=dw&password=s3cret", "redis://sentinel:26379/0?master_name=dw&password=xxxxx"},
		{"redis://sentinel:26379/0?master_name=dw&password=s3%zzcret", "redis://sentinel:26379/0?xxxxx"},
		{"http://user:s3cret@broker/?password=s3cret", "http://user:xxxxx@broker/?password=xxxxx"},
		{"redis://[::1", "(unparsable URL)"},
		// An IPv6 address without brackets: the error says what is wrong.
		{"http://::1:18499/doveadm/v1", "(unparsable URL: an IPv6 address goes in brackets, as in http://[::1]:8080/)"},
		{"http://u:s3cret@2001:db8::1/x", "(unparsable URL: an IPv6 address goes in brackets, as in http://[::1]:8080/)"},
		{"http://u:s3:cret@host:80%/x", unparsableAt},
		// A password with a '/' (base64) ends the host at a port that is none.
		{"redis://:s3cr/et@redis:6379/0", unparsableAt},
		// A password with '?', '#' or '/' ends the host early.
		{"redis://dw:?s3cret@redis:6379/0", hiddenAt},
		{"http://:?s3cret@broker/", hiddenAt},
		{"http://u:123#s3cret@host/", hiddenAt},
		{"redis://dw:123/s3cret@redis:6379/0", hiddenAt},
		{"/redis://dw:s3cret@redis", hiddenAt},
		{"redis://redis/0?master_name=dw&password=ab#s3cret", "redis://redis/0?master_name=dw&password=xxxxx#xxxxx"},
		{"redis:dw:s3cret@redis:6379", "redis:xxxxx"},
		{"rediss://dw:s3cret@h/0?#&password=s3cret", "rediss://dw:xxxxx@h/0?#xxxxx"},
		// go-redis refuses these, and its error comes after the URL.
		{"redis://sentinel:26379/0?master_name=dw&sentinel_password=s3cret", "redis://sentinel:26379/0?master_name=dw&sentinel_password=xxxxx"},
		{"redis://redis/0?Password=s3a&password=s3b&auth_token=s3c&db=1", "redis://redis/0?Password=xxxxx&auth_token=xxxxx&db=1&password=xxxxx"},
		{"http://broker/?client_secret=s3cret&passwd=s3cret", "http://broker/?client_secret=xxxxx&passwd=xxxxx"},
	} {
		got := RedactURL(c.in)
		if got != c.want {
			t.Errorf("RedactURL(%q) = %q, want %q", c.in, got, c.want)
		}
		if strings.Contains(got, "s3") {
			t.Errorf("RedactURL(%q) = %q shows the password", c.in, got)
		}
	}
}

func TestEventSource(t *testing.T) {
	for _, ok := range []string{"dovewarden/sync", "https://example.org/sync", "urn:dovewarden:sync"} {
		if err := EventSource("source", ok); err != nil {
			t.Errorf("EventSource(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "dovewarden/%zz", "http://[::1", "a b", "dovewarden/sync\n", "dovewarden/\u00e9", "urn:{x}"} {
		if err := EventSource("source", bad); err == nil || !strings.Contains(err.Error(), "source") {
			t.Errorf("EventSource(%q) = %v, want an error naming the setting", bad, err)
		}
	}
}

func TestParse_FlagsAfterArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		url  string
		n    int
		rest []string
	}{
		{[]string{"alice", "--broker-url", "http://flag", "bob", "--send-retries=5"}, "http://flag", 5, []string{"alice", "bob"}},
		{[]string{"--send-retries", "4", "alice"}, "default", 4, []string{"alice"}},
		{[]string{"alice", "--", "--send-retries", "bob"}, "default", 3, []string{"alice", "--send-retries", "bob"}},
		{[]string{"--", "-x"}, "default", 3, []string{"-x"}},
		{[]string{"alice", "-", "bob"}, "default", 3, []string{"alice", "-", "bob"}},
		{nil, "default", 3, nil},
	} {
		fs, s, _, n := newSet()
		if err := Parse(fs, tc.args, func(string) string { return "" }); err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if *s != tc.url || *n != tc.n || !slices.Equal(fs.Args(), tc.rest) {
			t.Errorf("%q: broker-url %q, send-retries %d, arguments %q; want %q, %d, %q", tc.args, *s, *n, fs.Args(), tc.url, tc.n, tc.rest)
		}
	}
	fs, _, _, _ := newSet()
	if err := Parse(fs, []string{"alice", "--no-such-flag"}, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("an unknown flag after an argument: %v", err)
	}
}
