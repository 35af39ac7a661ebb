package dovecotconfig

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// recorder collects the exporter's POSTs as "event cmd_name args" (the
// reason codes for cmd_name in a session's end).
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var ev struct {
		Event  string `json:"event"`
		Fields struct {
			CmdName    string   `json:"cmd_name"`
			CmdArgs    string   `json:"cmd_args"`
			ReasonCode []string `json:"reason_code"`
		} `json:"fields"`
	}
	if err := json.Unmarshal(body, &ev); err == nil {
		name := ev.Fields.CmdName
		if ev.Event == "mail_user_session_finished" {
			name = strings.Join(ev.Fields.ReasonCode, ",")
		}
		r.mu.Lock()
		r.got = append(r.got, ev.Event+" "+name+" "+ev.Fields.CmdArgs)
		r.mu.Unlock()
	}
	w.WriteHeader(http.StatusAccepted)
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.got...)
	sort.Strings(out)
	return out
}

// TestSnippets_RealDovecot loads each shipped snippet into a real Dovecot of
// its version and checks what it exports: changes, including a FETCH that
// sets \Seen, a command that failed (NO), a POP3 session's end, a
// doveadm expunge, a Sieve script saved over ManageSieve and activated with
// doveadm, but not a FETCH with .PEEK, a SELECT, a command refused as BAD,
// a doveadm fetch or reading Sieve scripts. This
// is the proof that the filter syntax (wildcards on cmd_args) means what
// the snippet says on both versions.
func TestSnippets_RealDovecot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running Dovecot test instances needs root (CI runs as root)")
	}
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			inst := startWithSnippet(t, version, rec, map[string]string{"u1": "pass"}, "")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := dovecottest.LoginIMAP(ctx, inst.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage("hello", "body")); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"SELECT INBOX", "FETCH 1 (BODY.PEEK[])", "FETCH 1 (body[])", "CREATE INBOX", "STORE 1 FOO", "UID STORE 1 +FLAGS (\\Flagged)"} {
				if _, tagged, err := s.Cmd(ctx, cmd); err != nil {
					t.Fatalf("%s: %v (%s)", cmd, err, tagged)
				}
			}
			// A POP3 session that fetches a message: its end writes \Seen.
			p, err := dovecottest.LoginPOP3(ctx, inst.POP3Addr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			if st, _, err := p.CmdMulti(ctx, "RETR 1"); err != nil || !strings.HasPrefix(st, "+OK") {
				t.Fatalf("RETR 1: %v %s", err, st)
			}
			if st, err := p.Cmd(ctx, "QUIT"); err != nil || !strings.HasPrefix(st, "+OK") {
				t.Fatalf("QUIT: %v %s", err, st)
			}
			p.Close()
			// An administrator's expunge is exported; a doveadm fetch,
			// which changes nothing, is not.
			for _, args := range [][]string{{"fetch", "-u", "u1", "uid", "mailbox", "INBOX", "all"}, {"expunge", "-u", "u1", "mailbox", "INBOX", "all"}} {
				if out, err := inst.Doveadm(ctx, args...); err != nil {
					t.Fatalf("doveadm %v: %v %s", args, err, out)
				}
			}
			// A Sieve script saved over ManageSieve and activated with
			// doveadm is exported; listing and reading it are not.
			ms, err := dovecottest.LoginManageSieve(ctx, inst.ManageSieveAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := ms.ListScripts(ctx); err != nil {
				t.Fatal(err)
			}
			if err := ms.PutScript(ctx, "vacation", "keep;\n"); err != nil {
				t.Fatal(err)
			}
			if _, err := ms.GetScript(ctx, "vacation"); err != nil {
				t.Fatal(err)
			}
			if err := ms.Logout(ctx); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"sieve", "list", "-u", "u1"}, {"sieve", "activate", "-u", "u1", "vacation"}} {
				if out, err := inst.Doveadm(ctx, args...); err != nil {
					t.Fatalf("doveadm %v: %v %s", args, err, out)
				}
			}
			// A failed CREATE (NO) is exported, as a command that fails
			// may have done part of its work; the STORE refused as BAD,
			// the SELECT, the FETCH with .PEEK and POP3's commands are
			// not, nor is the end of the IMAP session (still open).
			want := []string{
				"imap_command_finished APPEND ",
				"imap_command_finished CREATE INBOX",
				"imap_command_finished FETCH 1 (body[])",
				"imap_command_finished UID STORE 1 +FLAGS (\\Flagged)",
				"mail_user_session_finished  ",
				"mail_user_session_finished doveadm:cmd_expunge ",
				"mail_user_session_finished doveadm:cmd_sieve_activate ",
				`managesieve_command_finished PUTSCRIPT "vacation"`,
			}
			deadline := time.Now().Add(15 * time.Second)
			var got []string
			for time.Now().Before(deadline) {
				if got = rec.events(); len(got) >= len(want) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // anything unwanted arrives too
			got = rec.events()
			if len(got) != len(want) {
				t.Fatalf("exported %d events, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
			}
			for i := range want {
				if !strings.HasPrefix(got[i], want[i]) {
					t.Errorf("export %d: %q, want prefix %q", i, got[i], want[i])
				}
			}
		})
	}
}

// TestDoveadmSnippets_RealDovecot runs two Dovecot servers of each version
// whose doveadm part is the shipped doveadm snippet (its ports and
// password replaced by the test's) and replicates a message from one to
// the other through the first one's doveadm HTTP API, as the sync
// function does.
func TestDoveadmSnippets_RealDovecot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running Dovecot test instances needs root (CI runs as root)")
	}
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			snippet, err := os.ReadFile("doveadm-" + version + ".conf")
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"port = 12345", "port = 8081", "doveadm_password = CHANGE-ME"} {
				if strings.Count(string(snippet), s) != 1 {
					t.Fatalf("the snippet has %q %d times, want once", s, strings.Count(string(snippet), s))
				}
			}
			const password = "snippet-test"
			doveadm := func(p dovecottest.Ports) string {
				return strings.NewReplacer("port = 12345", fmt.Sprintf("port = %d", p.Doveadm),
					"port = 8081", fmt.Sprintf("port = %d", p.DoveadmHTTP), "CHANGE-ME", password).Replace(string(snippet))
			}
			users := map[string]string{"u1": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: version, Name: "mail-a.test", Users: users,
				DoveadmPassword: password, DoveadmConfig: doveadm})
			b := dovecottest.StartT(t, dovecottest.Options{Version: version, Name: "mail-b.test", Users: users,
				DoveadmPassword: password, DoveadmConfig: doveadm})
			// The instance runs the snippet's doveadm part, not its own.
			if conf := string(mustRead(t, a.ConfigPath)); strings.Count(conf, "doveadm_password =") != 1 ||
				strings.Count(conf, "service doveadm {") != 1 || !strings.Contains(conf, "the doveadm listeners dovewarden's sync needs") {
				t.Fatalf("the instance's config is not the snippet's:\n%s", conf)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage("through the snippet", "x")); err != nil {
				t.Fatal(err)
			}
			if out, err := a.Sync(ctx, "u1", b); err != nil {
				t.Fatalf("dsync through the snippet's listeners: %v (%s)", err, out)
			}
			out, err := b.Doveadm(ctx, "-f", "flow", "mailbox", "status", "-u", "u1", "messages", "INBOX")
			if err != nil || strings.TrimSpace(string(out)) != "INBOX messages=1" {
				t.Fatalf("INBOX of u1 on the other server: %q, %v; want messages=1", out, err)
			}
		})
	}
}

// startWithSnippet starts a Dovecot of version named mail-a.test with the
// shipped events snippet, its exporter posting to h, and extra appended to
// its configuration.
func startWithSnippet(t *testing.T, version string, h http.Handler, users map[string]string, extra string) *dovecottest.Instance {
	t.Helper()
	return startWithSnippetIn(t, version, "", h, users, extra)
}

// startWithSnippetIn is startWithSnippet with the instance folder dir
// (empty: a new temporary one), for an extra configuration that names
// paths in it.
func startWithSnippetIn(t *testing.T, version, dir string, h http.Handler, users map[string]string, extra string) *dovecottest.Instance {
	t.Helper()
	if err := dovecottest.Ensure(version); err != nil {
		t.Fatal(err)
	}
	snippet, err := os.ReadFile("events-" + version + ".conf")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return dovecottest.StartT(t, dovecottest.Options{
		Version: version, Name: "mail-a.test", Dir: dir, Users: users,
		ExtraConfig: strings.ReplaceAll(string(snippet), "http://127.0.0.1:8080/events", srv.URL+"/events") + extra,
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
