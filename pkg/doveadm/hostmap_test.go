package doveadm

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

func TestParseHostMap_ActiveActivePair(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "b-password")
	// Saved by an editor that writes a UTF-8 byte order mark first, as
	// the secret files of the settings may be (config.Secret).
	if err := os.WriteFile(pwFile, []byte("\ufeffsecret-b\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := `{
	  "mail-a": {"url": "http://mail-a:8080/doveadm/v1", "destination": "tcp:mail-b:12345", "password_env": "A_PW"},
	  "mail-b": {"url": "http://mail-b:8080/doveadm/v1", "destination": "tcp:mail-a:12345", "password_file": "` + pwFile + `"},
	  "mail-c": {"url": "http://mail-c:8080/doveadm/v1", "destination": "tcp:mail-d:12345"}
	}`
	def := Endpoint{URL: "http://default:8080/doveadm/v1", Destination: "tcp:replica:12345", User: "doveadm", Password: "secret-default"}
	m, err := ParseHostMap([]byte(data), def, func(k string) string { return map[string]string{"A_PW": "secret-a"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(TransportHTTP); err != nil {
		t.Fatal(err)
	}
	a, b, c, other := m.Resolve("mail-a"), m.Resolve("MAIL-B"), m.Resolve("mail-c"), m.Resolve("unknown")
	if a.Destination != "tcp:mail-b:12345" || a.Password != "secret-a" || a.User != "doveadm" {
		t.Errorf("mail-a: %+v", a)
	}
	if b.Destination != "tcp:mail-a:12345" || b.Password != "secret-b" {
		t.Errorf("mail-b (resolved case-insensitively): %+v", b)
	}
	if c.Password != "secret-default" {
		t.Errorf("mail-c should inherit the default credentials: %+v", c)
	}
	if other.URL != def.URL {
		t.Errorf("unknown host should resolve to the default: %+v", other)
	}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("endpoint", "ep", a, "ep2", b)
	for _, sec := range m.Secrets() {
		if sec != "" && strings.Contains(logs.String(), sec) {
			t.Errorf("log shows a secret: %s", logs.String())
		}
	}
}

func TestParseHostMap_Rejects(t *testing.T) {
	def := Endpoint{URL: "http://d/doveadm/v1", Destination: "tcp:r:1", Password: "p"}
	dir := t.TempDir()
	blank, key := filepath.Join(dir, "blank"), filepath.Join(dir, "key")
	if err := os.WriteFile(blank, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte("k\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The wrong file named (a log, /dev/zero) was read whole.
	huge := filepath.Join(dir, "huge")
	if err := os.WriteFile(huge, make([]byte, config.MaxSecretFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct{ data, want string }{
		// Either would take the default host's password quietly.
		"empty password file": {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "password_file": "` + blank + `"}}`, "password_file " + blank + ": empty"},
		"empty api key file":  {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "api_key_file": "` + blank + `"}}`, "api_key_file " + blank + ": empty"},
		// One of the two is stale.
		"env and file":    {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "api_key_env": "KEY", "api_key_file": "` + key + `"}}`, "api_key_env and api_key_file are both set"},
		"inline password": {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "password": "x"}}`, "unknown field"},
		"unset env":       {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "password_env": "NOPE"}}`, "password_env: variable NOPE is empty"},
		"blank env":       {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "api_key_env": "BLANK"}}`, "api_key_env: variable BLANK is empty"},
		"missing file":    {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "password_file": "/nonexistent/pw"}}`, "host map: host a: password_file: open /nonexistent/pw"},
		"not json":        {`[1,2]`, "host map"},
		"huge file":       {`{"a": {"url": "http://a/", "destination": "tcp:b:1", "api_key_file": "` + huge + `"}}`, "host map: host a: api_key_file: " + huge + ": larger than"},
		// Every request naming it would be refused.
		"bad host name": {`{"mail a": {"url": "http://a/", "destination": "tcp:b:1"}}`, `host "mail a"`},
		// An address is no name ingest takes from an event: the
		// entry would never match one.
		"address as host name": {`{"::1": {"url": "http://a/", "destination": "tcp:b:1"}}`, `host "::1"`},
		// Host names match case-insensitively: which entry served the
		// host was down to the order Go walks a map, start by start.
		"one host by two spellings": {`{"mail-a": {"url": "http://a/", "destination": "tcp:b:1"}, "MAIL-A": {"url": "http://a/", "destination": "tcp:c:1"}}`, `hosts "mail-a" and "MAIL-A" are one`},
		// The decoder kept the last quietly.
		// What follows the object was ignored: the second host, or a
		// sign that the file is not what was meant.
		"a second object": {`{"mail-a": {"url": "http://a/", "destination": "tcp:b:1"}}
{"mail-b": {"url": "http://b/", "destination": "tcp:a:1"}}`, "after the host map's object"},
		"a brace too many": {`{"mail-a": {"url": "http://a/", "destination": "tcp:b:1"}}}`, "after the host map's object"},
		"one host twice":   {`{"mail-a": {"url": "http://a/", "destination": "tcp:b:1"}, "mail-a": {"url": "http://a/", "destination": "tcp:c:1"}}`, `host "mail-a" is named twice`},
	} {
		_, err := ParseHostMap([]byte(tt.data), def, func(k string) string { return map[string]string{"KEY": "k", "BLANK": " \n"}[k] })
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tt.want)
		}
	}
}

func TestHostMap_Validate(t *testing.T) {
	m := NewHostMap(Endpoint{URL: "ftp://x", Destination: "-oops"},
		Endpoint{Name: "b", URL: "http://b/doveadm/v1"})
	err := m.Validate(TransportHTTP)
	for _, want := range []string{"default host: doveadm url", "default host: no doveadm password", "must not start with '-'", "host b: no destination"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want %q", err, want)
		}
	}
	if err := NewHostMap(Endpoint{Destination: "tcp:r:1"}).Validate(TransportExec); err != nil {
		t.Errorf("exec needs no URL or password: %v", err)
	}
}

// A destination written as the replica's host and port without tcp:
// (mail-b:12345) is refused at start: dsync reads it as an ssh host, and
// every dsync failed with exit code 75, retried for good, as if the
// replica were down (or, localhost:12345, as a mail location). dsync's
// other destinations still pass.
func TestHostMap_ValidateDestinationWithoutTCP(t *testing.T) {
	for _, d := range []string{"mail-b:12345", "127.0.0.1:40157", "[2001:db8::2]:12345", "localhost:12345"} {
		err := NewHostMap(Endpoint{Destination: d}).Validate(TransportExec)
		if err == nil || !strings.Contains(err.Error(), "write tcp:"+d) {
			t.Errorf("%s: %v, want a refusal that says tcp:%s", d, err, d)
		}
	}
	for _, d := range []string{"tcp:mail-b:12345", "tcps:mail-b:12345", "tcp:[2001:db8::2]:12345", "remote:mail-b", "remoteprefix:vmail@mail-b", "mail-b", "vmail@mail-b", "ssh -i /etc/dovewarden/key mail-b doveadm dsync-server -u%u"} {
		if err := NewHostMap(Endpoint{Destination: d}).Validate(TransportExec); err != nil {
			t.Errorf("%s: %v, want it accepted", d, err)
		}
	}
}

// A destination dsync reads as a local mail location is refused at start:
// dovewarden syncs all namespaces (-N), which dsync refuses for a local
// destination (measured with Dovecot 2.3 and 2.4: "Fatal: -N parameter
// requires syncing with remote host", an EOF over the HTTP API, retried
// as if the replica were down, at every dsync). A doveadm URL given as
// the destination is one, and the error says so, without its password.
func TestHostMap_ValidateMailLocationDestination(t *testing.T) {
	for _, d := range []string{"maildir:~/Maildir", "mdbox:/srv/mail/%u:INDEX=/idx", "http://mail-b:8081/doveadm/v1", "https://doveadm:pw-x7@mail-b/doveadm/v1"} {
		err := NewHostMap(Endpoint{Destination: d}).Validate(TransportExec)
		if err == nil || !strings.Contains(err.Error(), "local mail location") || !strings.Contains(err.Error(), "tcp:HOST:PORT") {
			t.Errorf("%s: %v, want a refusal naming tcp:HOST:PORT", d, err)
			continue
		}
		if strings.HasPrefix(d, "http") != strings.Contains(err.Error(), "doveadm URL") {
			t.Errorf("%s: %v: says doveadm URL: %v", d, err, !strings.HasPrefix(d, "http"))
		}
		if strings.Contains(err.Error(), "pw-x7") {
			t.Errorf("%s: %v shows the password", d, err)
		}
	}
}

// A destination port that is no TCP port (0, or over 65535) is refused at
// start: Dovecot 2.3 and 2.4 fail every dsync to it as if the replica were
// down (exit code 75; 2.3's HTTP API closes the connection without an
// answer), retried for good (TestIntegrationDovecot_DestinationPortOutOfRange).
func TestHostMap_ValidateDestinationPort(t *testing.T) {
	for _, d := range []string{"tcp:mail-b:0", "tcp:mail-b:65536", "tcps:mail-b:99999", "tcp:10.0.0.2:00000", "tcp:[2001:db8::2]:70000", "tcps:[::1]:0"} {
		err := NewHostMap(Endpoint{Destination: d}).Validate(TransportExec)
		if err == nil || !strings.Contains(err.Error(), "1 to 65535") {
			t.Errorf("%s: %v, want a refusal naming the ports there are", d, err)
		}
	}
	for _, d := range []string{"tcp:mail-b:1", "tcp:mail-b:65535", "tcps:[2001:db8::2]:12345", "tcp:mail-b", "tcp:/run/dovecot/doveadm-server"} {
		if err := NewHostMap(Endpoint{Destination: d}).Validate(TransportExec); err != nil {
			t.Errorf("%s: %v, want it accepted", d, err)
		}
	}
}

// A doveadm URL whose port is no TCP port is refused at start: every
// request failed to dial ("invalid port"), a transport failure retried
// for good as if doveadm were down.
func TestHostMap_ValidateURLPort(t *testing.T) {
	for _, u := range []string{"http://mail-a:0/doveadm/v1", "http://mail-a:65536/doveadm/v1", "https://[2001:db8::1]:99999/doveadm/v1"} {
		err := NewHostMap(Endpoint{URL: u, Password: "p", Destination: "tcp:r:1"}).Validate(TransportHTTP)
		if err == nil || !strings.Contains(err.Error(), "1 to 65535") {
			t.Errorf("%s: %v, want a refusal naming the ports there are", u, err)
		}
	}
	for _, u := range []string{"http://mail-a:8081/doveadm/v1", "https://mail-a/doveadm/v1", "http://[2001:db8::1]:65535/doveadm/v1"} {
		if err := NewHostMap(Endpoint{URL: u, Password: "p", Destination: "tcp:r:1"}).Validate(TransportHTTP); err != nil {
			t.Errorf("%s: %v, want it accepted", u, err)
		}
	}
}

// An IPv6 destination dsync cannot read is refused at start with the form
// it reads (measured with real doveadm: tcp:[::1]:PORT on 2.3 and 2.4;
// 2.3 fails on tcp:::1:PORT, both on ::1:PORT and on tcp:[::1]).
func TestHostMap_ValidateIPv6Destination(t *testing.T) {
	for d, want := range map[string]string{
		"tcp:::1:12345":          "write tcp:[::1]:12345",
		"tcp:2001:db8::2:12345":  "write tcp:[2001:db8::2]:12345",
		"tcps:2001:db8::2:12345": "write tcps:[2001:db8::2]:12345",
		"::1:12345":              "write tcp:[::1]:12345",
		"2001:db8::2:12345":      "write tcp:[2001:db8::2]:12345",
		"tcp:[::1:12345":         "in brackets with its port",
		"tcp:[::1]":              "in brackets with its port",
		"tcp:mail b:1":           "dsync takes HOST:PORT",
		// No port, or one that could be the address's last group: no
		// guess at which is which.
		"tcp:::1":              "write tcp:[ADDRESS]:PORT",
		"tcp:2001:db8::2":      "write tcp:[ADDRESS]:PORT",
		"tcp:2001:db8::2:1234": "write tcp:[ADDRESS]:PORT",
		"2001:db8::2":          "write tcp:[ADDRESS]:PORT",
		"dead::beef":           "write tcp:[ADDRESS]:PORT",
	} {
		err := NewHostMap(Endpoint{Destination: d}).Validate(TransportExec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a refusal saying %q", d, err, want)
		}
	}
	// dsync's other forms: doveadm's UNIX socket after tcp: (2.3 and 2.4
	// connect to a path with a '/'), a zone, host names as DNS has them.
	for _, d := range []string{"tcp:[::1]:12345", "tcps:[2001:db8::2]:12345", "tcp:10.0.0.2:12345", "tcp:mail-b", "tcp:mail-b.example.org:12345",
		"tcp:/run/dovecot/doveadm-server", "tcps:/var/run/dovecot/doveadm-server", "tcp:[fe80::1%eth0]:12345", "tcp:_replica:12345", "tcp:Mail_B.Example.ORG.:12345"} {
		if err := NewHostMap(Endpoint{Destination: d}).Validate(TransportExec); err != nil {
			t.Errorf("%s: %v, want it accepted", d, err)
		}
	}
}
