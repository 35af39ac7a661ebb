package dovecotconfig

import (
	"context"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

// changeRecorder takes the exporter's POSTs and keeps what ingest makes of
// each: the change, or why it is dropped.
type changeRecorder struct {
	mu      sync.Mutex
	changes []change.Change
	dropped []string
}

func (r *changeRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	ev, err := dovecot.Parse(body)
	if err != nil {
		r.dropped = append(r.dropped, "unparsable: "+err.Error())
	} else if c, drop := dovecot.Classify(&ev); drop != "" {
		r.dropped = append(r.dropped, string(drop)+": "+string(body))
	} else {
		r.changes = append(r.changes, c)
	}
	w.WriteHeader(http.StatusAccepted)
}

// await waits until a change of user by command with priority p arrives.
func (r *changeRecorder) await(t *testing.T, what, user, command string, p change.Priority) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		found := slices.ContainsFunc(r.changes, func(c change.Change) bool {
			return c.User == user && c.Command == command && c.Priority == p
		})
		got, dropped := slices.Clone(r.changes), slices.Clone(r.dropped)
		r.mu.Unlock()
		if found {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, c := range got {
				b.WriteString("\n  " + c.User + " " + c.Command + " " + string(c.Priority))
			}
			t.Fatalf("%s: no %s change of %s by %q; changes:%s\ndropped: %q", what, p, user, command, b.String(), dropped)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSnippets_RealDovecot_OtherWaysMailChanges loads each shipped snippet
// into a real Dovecot of its version and changes mail the ways an
// administrator's site does besides IMAP and LMTP, each of which must reach
// ingest as a change: dovecot-lda run as the mail user (an MTA's pipe),
// whose events go through the stats-writer socket the snippet opens; a
// Sieve script run over existing mail with Pigeonhole's IMAP FILTER; a
// doveadm move out of another user's mailbox, whose source user only the
// expunges name; and Dovecot 2.3's doveadm batch.
func TestSnippets_RealDovecot_OtherWaysMailChanges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running Dovecot test instances needs root (CI runs as root)")
	}
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			rec := &changeRecorder{}
			filterPlugin := "protocol imap {\n  mail_plugins = $mail_plugins imap_filter_sieve\n}\n"
			if version == dovecottest.V24 {
				filterPlugin = "protocol imap {\n  mail_plugins {\n    imap_filter_sieve = yes\n  }\n}\n"
			}
			inst := startWithSnippet(t, version, rec, map[string]string{"u1": "pass", "u2": "pass"}, filterPlugin)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			if out, err := inst.LDA(ctx, "u1", dovecottest.TestMessage("by lda", "x")); err != nil {
				t.Fatalf("%v (%s)", err, out)
			}
			rec.await(t, "dovecot-lda as vmail", "u1", "", change.High)

			s, err := dovecottest.LoginIMAP(ctx, inst.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, tagged, err := s.Cmd(ctx, "SELECT INBOX"); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("SELECT: %v %s", err, tagged)
			}
			script := "require \"imap4flags\";\r\naddflag \"\\\\Flagged\";\r\n"
			if _, tagged, err := s.CmdLit(ctx, "FILTER SIEVE SCRIPT", script, " ALL"); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("FILTER: %v %s", err, tagged)
			}
			rec.await(t, "IMAP FILTER", "u1", "FILTER", change.High)
			if _, tagged, err := s.Cmd(ctx, "LOGOUT"); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("LOGOUT: %v %s", err, tagged)
			}

			// u1's message moves to u2: both users changed.
			if out, err := inst.Doveadm(ctx, "move", "-u", "u2", "INBOX", "user", "u1", "mailbox", "INBOX", "all"); err != nil {
				t.Fatalf("doveadm move: %v (%s)", err, out)
			}
			rec.await(t, "doveadm move, its destination", "u2", "doveadm move", change.Low)
			rec.await(t, "doveadm move, its source", "u1", "doveadm move", change.Low)
			if out, err := inst.Doveadm(ctx, "-f", "flow", "mailbox", "status", "-u", "u1", "messages", "INBOX"); err != nil ||
				strings.TrimSpace(string(out)) != "INBOX messages=0" {
				t.Fatalf("u1's INBOX after the move: %q, %v; want messages=0", out, err)
			}

			if version == dovecottest.V23 { // 2.4 has no batch
				if out, err := inst.Doveadm(ctx, "batch", "-u", "u2", ":", "flags", "add", `\Seen`, "mailbox", "INBOX", "all",
					":", "mailbox", "create", "Batched"); err != nil {
					t.Fatalf("doveadm batch: %v (%s)", err, out)
				}
				rec.await(t, "doveadm batch", "u2", "doveadm batch", change.Low)
			}
		})
	}
}
