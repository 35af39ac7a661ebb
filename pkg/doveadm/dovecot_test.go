package doveadm_test

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// messages returns the INBOX message count of user on in.
func messages(t *testing.T, in *dovecottest.Instance, user string) string {
	t.Helper()
	out, err := in.Doveadm(context.Background(), "mailbox", "status", "-u", user, "messages", "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "messages=") {
			return f
		}
	}
	t.Fatalf("doveadm mailbox status: no messages= in %q", out)
	return ""
}

// The doveadm-http transport against two real Dovecot 2.3 instances: a
// first sync, an incremental one with the returned state, the other
// direction, and the failures the policy table must classify.
func TestIntegrationDovecot23_DoveadmHTTPTransport(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	users := map[string]string{"u1": "pass"}
	a := dovecottest.StartT(t, dovecottest.Options{Version: dovecottest.V23, Name: "mail-a.test", Users: users})
	b := dovecottest.StartT(t, dovecottest.Options{Version: dovecottest.V23, Name: "mail-b.test", Users: users})
	appendTo := func(in *dovecottest.Instance, subject string) {
		t.Helper()
		s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage(subject, "x")); err != nil {
			t.Fatal(err)
		}
	}
	tr := doveadm.NewHTTP(nil, time.Minute)
	aToB := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword, Destination: b.Destination}
	bToA := doveadm.Endpoint{Name: b.Name, URL: b.DoveadmHTTPURL, User: "doveadm", Password: b.DoveadmPassword, Destination: a.Destination}
	sync := func(ep doveadm.Endpoint, req doveadm.SyncRequest) (doveadm.SyncResult, error) {
		req.Destination, req.LockTimeout = ep.Destination, 10*time.Second
		return tr.Sync(ctx, ep, req)
	}

	appendTo(a, "m1")
	appendTo(a, "m2")
	first, err := sync(aToB, doveadm.SyncRequest{User: "u1"})
	if err != nil || first.State == "" {
		t.Fatalf("first sync: %+v %v", first, err)
	}
	if got := messages(t, b, "u1"); got != "messages=2" {
		t.Fatalf("replica has %s after the first sync", got)
	}

	appendTo(a, "m3")
	second, err := sync(aToB, doveadm.SyncRequest{User: "u1", State: first.State})
	if err != nil || second.State == "" || second.State == first.State {
		t.Fatalf("incremental sync: %+v %v", second, err)
	}
	if got := messages(t, b, "u1"); got != "messages=3" {
		t.Fatalf("replica has %s after the incremental sync", got)
	}

	appendTo(b, "m4")
	if _, err := sync(bToA, doveadm.SyncRequest{User: "u1", Full: true}); err != nil {
		t.Fatalf("B->A full sync: %v", err)
	}
	if got := messages(t, a, "u1"); got != "messages=4" {
		t.Fatalf("A has %s after B->A", got)
	}

	_, err = sync(aToB, doveadm.SyncRequest{User: "nosuchuser"})
	if r := doveadm.Decide(err); r.Class != "no_user" {
		t.Errorf("unknown user: %v, class %s", err, r.Class)
	}

	wrong := aToB
	wrong.Password = "wrong-password-not-shown"
	_, err = sync(wrong, doveadm.SyncRequest{User: "u1"})
	if r := doveadm.Decide(err); r.Class != "unauthorized" || strings.Contains(err.Error(), wrong.Password) {
		t.Errorf("wrong password: %v, class %s", err, r.Class)
	}

	// Destination down: 2.3's doveadm closes the connection without an
	// answer (EOF), or answers 75; both retryable.
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err = sync(aToB, doveadm.SyncRequest{User: "u1", State: second.State})
	if r := doveadm.Decide(err); !r.Retryable || (r.Class != "transport" && r.Class != "tempfail") {
		t.Errorf("destination down: %v, class %s", err, r.Class)
	}
	t.Logf("destination down: %v", err)
}

// Across an untrusted network both doveadm hops take TLS: the doveadm
// HTTP API over https, checked against doveadm-ca-file's CAs, and dsync's
// own connection to the destination (tcps:), checked by the source's
// Dovecot against its ssl_client_ca_file. Real Dovecot 2.3 and 2.4, as
// the doveadm snippets' comments describe.
func TestIntegrationDovecot_DoveadmOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dir := t.TempDir()
			ca, err := testcert.NewCA(dir)
			if err != nil {
				t.Fatal(err)
			}
			start := func(name string, trust string) *dovecottest.Instance {
				cert, key, err := ca.Issue(dir, testcert.Leaf{Name: name, Hosts: []string{"127.0.0.1"},
					Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
				if err != nil {
					t.Fatal(err)
				}
				return dovecottest.StartT(t, dovecottest.Options{Version: v, Name: name, Users: map[string]string{"u1": "pass"},
					DoveadmCertFile: cert, DoveadmKeyFile: key, ClientCAFile: trust})
			}
			// A trusts the CA; C, a second source, does not.
			a, b, c := start("mail-a.test", ca.File), start("mail-b.test", ""), start("mail-c.test", "")
			if !strings.HasPrefix(a.DoveadmHTTPURL, "https://") || !strings.HasPrefix(b.Destination, "tcps:") {
				t.Fatalf("instance not on TLS: %s, %s", a.DoveadmHTTPURL, b.Destination)
			}
			s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage("m1", "x")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			// doveadm-ca-file holds another CA at first, and gets A's
			// added while the client that read it runs (read again at
			// each request).
			other, err := testcert.NewCA(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			trust := filepath.Join(dir, "doveadm-ca.pem")
			copyFile(t, other.File, trust)
			caFile, err := config.LoadCAFile("doveadm-ca-file", trust)
			if err != nil {
				t.Fatal(err)
			}
			withFile := doveadm.Client(caFile, slog.New(slog.DiscardHandler))
			sync := func(client *http.Client, src *dovecottest.Instance) error {
				ep := doveadm.Endpoint{Name: src.Name, URL: src.DoveadmHTTPURL, User: "doveadm", Password: src.DoveadmPassword, Destination: b.Destination}
				_, err := doveadm.NewHTTP(client, time.Minute).Sync(ctx, ep,
					doveadm.SyncRequest{User: "u1", Destination: ep.Destination, LockTimeout: 10 * time.Second})
				return err
			}

			// An http:// URL to the TLS listener: doveadm closes each plain
			// request at once. Reported as such, not retried for ever as
			// a busy doveadm; the listing alike.
			plain := doveadm.Endpoint{Name: a.Name, URL: "http://" + strings.TrimPrefix(a.DoveadmHTTPURL, "https://"),
				Password: a.DoveadmPassword, Destination: b.Destination}
			_, err = doveadm.NewHTTP(withFile, time.Minute).Sync(ctx, plain, doveadm.SyncRequest{User: "u1", Destination: b.Destination})
			if r := doveadm.Decide(err); r.Class != "tls" || r.Retryable || !strings.Contains(err.Error(), "use https://") {
				t.Errorf("an http:// URL to the TLS listener: %v, class %s, want tls, not retried, naming https://", err, r.Class)
			}
			err = doveadm.NewHTTP(withFile, time.Minute).ListUsers(ctx, plain, func(string) error { return nil })
			if r := doveadm.Decide(err); r.Class != "tls" {
				t.Errorf("listing users over an http:// URL to the TLS listener: %v, class %s, want tls", err, r.Class)
			}

			for _, c := range []struct {
				name   string
				client *http.Client
			}{{"the system's CAs", doveadm.Client(nil, nil)}, {"another CA", withFile}} {
				err = sync(c.client, a)
				if r := doveadm.Decide(err); r.Class != "tls" || !strings.Contains(err.Error(), "unknown authority") {
					t.Errorf("%s: %v, class %s, want tls", c.name, err, r.Class)
				}
			}
			copyFile(t, ca.File, trust)
			// B is not read before the sync: Dovecot 2.3 would create an
			// INBOX of its own there, and every dsync would then answer 2.
			// A first sync may answer 2 (changed during the sync), which the
			// sync function runs again.
			for i := 0; i < 5; i++ {
				if err = sync(withFile, a); doveadm.Decide(err).Class != "changed" {
					break
				}
			}
			if err != nil {
				t.Fatalf("with doveadm-ca-file's CA: %v", err)
			}
			if got := messages(t, b, "u1"); got != "messages=1" {
				t.Fatalf("replica has %s after the sync over TLS", got)
			}
			// dsync from C, which does not trust B's certificate: Dovecot
			// refuses the connection, and doveadm answers 75 (retried).
			err = sync(withFile, c)
			if r := doveadm.Decide(err); r.Class != "tempfail" {
				t.Errorf("a source that does not trust the destination: %v, class %s, want tempfail", err, r.Class)
			}
			t.Logf("a source that does not trust the destination: %v", err)
		})
	}
}

// What a mail administrator meets on the destination's side of a dsync,
// with real Dovecot 2.3 and 2.4, through both transports. Over the HTTP
// API doveadm answers only an exit code, so the policy's reason must name
// every cause measured for it: 75 comes for a destination whose
// doveadm_password is another, whose port is another listener (IMAP,
// doveadm's http one: "doveadm server sent invalid handshake"), or whose
// mail storage fails (mkdir of the user's mail folder: permission
// denied), not only for one that is down. A user that exists on one side
// only is 67 (no_user), reported, not retried.
func TestIntegrationDovecot_DestinationFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test",
				Users: map[string]string{"u1": "pass", "onlya": "pass", "locked": "pass"}})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test",
				Users: map[string]string{"u1": "pass", "onlyb": "pass", "locked": "pass"}})
			c := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-c.test",
				Users: map[string]string{"u1": "pass"}, DoveadmPassword: "another-password"})
			waitListening(t, a.DoveadmHTTPURL)
			for _, u := range []string{"u1", "onlya", "locked"} {
				if out, err := a.LDA(ctx, u, dovecottest.TestMessage("m1", "x")); err != nil {
					t.Fatalf("deliver to %s: %v: %s", u, err, out)
				}
			}
			// locked's mail folder on B is root's and read-only.
			home := filepath.Join(b.Dir, "mail", "locked")
			if err := os.MkdirAll(home, 0o555); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(home, 0o555); err != nil {
				t.Fatal(err)
			}
			bin, err := a.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword, Config: a.ConfigPath}
			for _, tc := range []struct {
				name, user, dest, class string
				says                    []string
			}{
				{"user on the source only", "onlya", b.Destination, doveadm.ClassNoUser, []string{"no such user"}},
				{"user on the destination only", "onlyb", b.Destination, doveadm.ClassNoUser, []string{"no such user"}},
				{"destination with another doveadm_password", "u1", c.Destination, doveadm.ClassTempfail, []string{"doveadm_password"}},
				{"destination port is its IMAP listener", "u1", "tcp:" + b.IMAPAddr, doveadm.ClassTempfail, []string{"not its doveadm listener"}},
				{"destination mail folder not writable", "locked", b.Destination, doveadm.ClassTempfail, []string{"mail storage", "destination's log"}},
			} {
				for _, tr := range []struct {
					name string
					t    doveadm.Transport
				}{{"doveadm-http", doveadm.NewHTTP(nil, time.Minute)}, {"doveadm-exec", doveadm.NewExec(bin, time.Minute)}} {
					_, err := tr.t.Sync(ctx, ep, doveadm.SyncRequest{User: tc.user, Destination: tc.dest, Full: true, LockTimeout: 10 * time.Second})
					r := doveadm.Decide(err)
					if r.Class != tc.class || r.Retryable != (tc.class == doveadm.ClassTempfail) {
						t.Errorf("%s, %s: %v, rule %v; want class %s", tc.name, tr.name, err, r, tc.class)
						continue
					}
					for _, s := range tc.says {
						if !strings.Contains(err.Error(), s) {
							t.Errorf("%s, %s: %q does not say %q", tc.name, tr.name, err, s)
						}
					}
				}
			}
		})
	}
}

// More requests than doveadm's HTTP service has processes for (service
// doveadm { process_limit }), with real Dovecot 2.3 and 2.4: a dsync to a
// destination that never answers keeps its doveadm process after the
// request's timeout cut it (Dovecot goes on with the dsync), and the
// next requests either wait in the listen queue until their timeout or
// are closed at once, before any answer, by the master ("client
// connections are being dropped" in its log): EOF or a reset. Each is a
// transport failure, retried, whose message names the process limit.
func TestIntegrationDovecot_DoveadmProcessesBusy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx := context.Background()
			users := map[string]string{"u1": "pass", "u2": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users,
				ExtraConfig: "service doveadm {\n  process_limit = 1\n}\n"})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
			waitListening(t, a.DoveadmHTTPURL)
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword}
			_, err := doveadm.NewHTTP(nil, 2*time.Second).Sync(ctx, ep,
				doveadm.SyncRequest{User: "u1", Destination: "tcp:" + redistest.Silent(t), Full: true})
			if r := doveadm.Decide(err); r.Class != "transport" {
				t.Fatalf("dsync to a destination that never answers: %v, rule %v", err, r)
			}
			check := func(what string, err error) {
				t.Helper()
				if r := doveadm.Decide(err); r.Class != "transport" || !r.Retryable || !strings.Contains(err.Error(), "process_limit") {
					t.Errorf("%s with every doveadm process busy: %v, rule %v; want a retried transport failure naming process_limit", what, err, r)
				}
				t.Logf("%s: %v", what, err)
			}
			for range 2 {
				tr := doveadm.NewHTTP(nil, 3*time.Second)
				_, err := tr.Sync(ctx, ep, doveadm.SyncRequest{User: "u2", Destination: b.Destination, Full: true})
				check("dsync", err)
				check("listing", tr.ListUsers(ctx, ep, func(string) error { return nil }))
			}
		})
	}
}

// copyFile writes src's content over dst, as a rotation writes a CA file.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
