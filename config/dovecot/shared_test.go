package dovecotconfig

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// sharedConfig is a site's mailbox sharing for version, with its files
// under dir: a shared namespace (another user's mailboxes as
// shared/OWNER/..., per-user \Seen flags, the sharing dictionary LIST
// needs) and a public namespace Public/ (mail of no user, in
// dir/mail/public) where anyone may do anything; LMTP delivers to
// user+MAILBOX's mailbox.
func sharedConfig(version, dir string) string {
	if version == dovecottest.V23 {
		// The public namespace's rights are in its root's dovecot-acl
		// (sharedDir writes it).
		return fmt.Sprintf(`namespace shared {
  type = shared
  separator = /
  prefix = shared/%%%%u/
  location = maildir:%%%%h/Maildir:INDEXPVT=~/Maildir/shared/%%%%u
  subscriptions = no
  list = children
}
namespace public {
  type = public
  separator = /
  prefix = Public/
  location = maildir:%[1]s/mail/public
  subscriptions = no
  list = children
}
plugin {
  acl_shared_dict = file:%[1]s/mail/shared-mailboxes.db
}
lmtp_save_to_detail_mailbox = yes
recipient_delimiter = +
`, dir)
	}
	// 2.4 does not read the public root's dovecot-acl for a CREATE: the
	// rights are in the config.
	return fmt.Sprintf(`namespace shared {
  type = shared
  separator = /
  prefix = shared/$user/
  mail_driver = maildir
  mail_path = %%{owner_home}/Maildir
  mail_index_private_path = ~/Maildir/shared/%%{owner_user}
  subscriptions = no
  list = children
}
namespace public {
  type = public
  separator = /
  prefix = Public/
  mail_driver = maildir
  mail_path = %[1]s/mail/public
  subscriptions = no
  list = children
  acl anyone {
    rights = lrwstipekxa
  }
}
acl_sharing_map {
  dict file {
    path = %[1]s/mail/shared-mailboxes.db
  }
}
lmtp_save_to_detail_mailbox = yes
recipient_delimiter = +
`, dir)
}

// sharedDir makes an instance folder for sharedConfig, removed after the
// instance stopped: the public mail folder, which the mail user can write,
// and its root's rights for Dovecot 2.3.
func sharedDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dovecot-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	pub := filepath.Join(d, "mail", "public")
	for _, err := range []error{
		os.Chmod(d, 0o755),
		os.MkdirAll(pub, 0o777),
		os.Chmod(pub, 0o777),
		os.WriteFile(filepath.Join(pub, "dovecot-acl"), []byte("anyone lrwstipekxa\n"), 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// TestSnippets_RealDovecot_SharedAndPublicMailboxes: u1 changes u2's
// mailbox Shared1, which u2 shared with u1 (ACL), and the public mailbox
// Public/Team, over IMAP and LMTP, on a Dovecot with the shipped events
// snippet. Every event names u1, the user who acted, never u2, the owner
// (so ingest emits changes of u1 only); Public/Team belongs to no user.
// u1's dsync copies both to the replica, through either transport,
// because dovewarden asks dsync for all namespaces (-N, allNamespaces),
// as Dovecot 2.3's replicator did: without it dsync skips every namespace
// with a location of its own, and the change would wait for u2's next
// dsync (a change of u2's own, or its periodic full sync), or, for the
// public mailbox, for ever. And u1's first dsync fails as a whole (75,
// tempfail) while u2's Shared1 is not on the replica yet: u1 may not
// create it there.
func TestSnippets_RealDovecot_SharedAndPublicMailboxes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running Dovecot test instances needs root (CI runs as root)")
	}
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			rec := &changeRecorder{}
			users := map[string]string{"u1": "pass", "u2": "pass"}
			da, db := sharedDir(t), sharedDir(t)
			a := startWithSnippetIn(t, version, da, rec, users, sharedConfig(version, da))
			b := dovecottest.StartT(t, dovecottest.Options{Version: version, Name: "mail-b.test", Dir: db, Users: users,
				ExtraConfig: sharedConfig(version, db)})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			doveadmOK := func(in *dovecottest.Instance, args ...string) string {
				t.Helper()
				out, err := in.Doveadm(ctx, args...)
				if err != nil {
					t.Fatalf("%s: %v (%s)", in.Name, err, out)
				}
				return strings.TrimSpace(string(out))
			}
			// What each server has of u2's Shared1 and of Public/Team:
			// messages and flagged messages.
			contents := func(in *dovecottest.Instance) string {
				t.Helper()
				var parts []string
				for _, m := range [][2]string{{"u2", "Shared1"}, {"u1", "Public/Team"}} {
					st := doveadmOK(in, "-f", "flow", "mailbox", "status", "-u", m[0], "messages", m[1])
					flagged := doveadmOK(in, "search", "-u", m[0], "mailbox", m[1], "flagged")
					parts = append(parts, fmt.Sprintf("%s %s, flagged=%d", m[0], st, len(strings.Fields(flagged))/2))
				}
				return strings.Join(parts, "; ")
			}

			doveadmOK(a, "mailbox", "create", "-u", "u2", "Shared1")
			doveadmOK(a, "acl", "set", "-u", "u2", "Shared1", "user=u1",
				"lookup", "read", "write", "write-seen", "write-deleted", "insert", "expunge", "post")
			doveadmOK(a, "mailbox", "create", "-u", "u1", "Public/Team")

			http := doveadm.NewHTTP(nil, time.Minute)
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword,
				Destination: b.Destination, Config: a.ConfigPath}
			sync := func(tr doveadm.Transport, user, state string) (string, error) {
				res, err := tr.Sync(ctx, ep, doveadm.SyncRequest{User: user, Destination: b.Destination, State: state,
					Full: state == "", LockTimeout: 10 * time.Second})
				return res.State, err
			}
			// u1 sees Shared1 before the replica has it, and may not
			// create it there: the whole dsync fails, u1's own mail too.
			_, err := sync(http, "u1", "")
			var de *doveadm.Error
			if !errors.As(err, &de) || de.Kind != doveadm.KindExitCode || de.ExitCode != 75 {
				t.Fatalf("u1's first dsync before u2's: %v; want exit code 75 (u1 may not create shared/u2/Shared1 on the replica)", err)
			}
			if _, err := sync(http, "u2", ""); err != nil {
				t.Fatalf("u2's first dsync: %v", err)
			}
			state, err := sync(http, "u1", "")
			if err != nil {
				t.Fatalf("u1's first dsync after u2's: %v", err)
			}
			// The ACL went with u2's mailbox: u1 has its rights there on the replica.
			if acl := doveadmOK(b, "acl", "get", "-u", "u2", "Shared1"); !strings.Contains(acl, "user=u1") {
				t.Fatalf("the replica's ACL of u2's Shared1: %q", acl)
			}

			// Changes from here on, by u1 in mailboxes that are not u1's.
			rec.mu.Lock()
			rec.changes, rec.dropped = nil, nil
			rec.mu.Unlock()
			s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for _, m := range []string{"shared/u2/Shared1", "INBOX", "Public/Team"} {
				if tagged, err := s.Append(ctx, m, "", dovecottest.TestMessage("to "+m, "x")); err != nil || !dovecottest.IsOK(tagged) {
					t.Fatalf("APPEND %s: %v %s", m, err, tagged)
				}
			}
			for _, cmd := range []string{"SELECT INBOX", "COPY 1 shared/u2/Shared1", "SELECT shared/u2/Shared1",
				`STORE 1 +FLAGS (\Flagged)`, `STORE 2 +FLAGS (\Deleted)`, "EXPUNGE", "SELECT Public/Team", `STORE 1 +FLAGS (\Flagged)`} {
				if _, tagged, err := s.Cmd(ctx, cmd); err != nil || !dovecottest.IsOK(tagged) {
					t.Fatalf("%s: %v %s", cmd, err, tagged)
				}
			}
			if err := dovecottest.DeliverLMTP(a.LMTPAddr, "sender@example.test", "u1+shared/u2/Shared1@example.test",
				dovecottest.TestMessage("lmtp to u1 detail shared", "x")); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				command, mailbox string
				p                change.Priority
			}{
				{"APPEND", "shared/u2/Shared1", change.High}, {"APPEND", "Public/Team", change.High},
				{"COPY", "INBOX", change.High}, {"STORE", "shared/u2/Shared1", change.Low},
				{"EXPUNGE", "shared/u2/Shared1", change.Low}, {"STORE", "Public/Team", change.Low},
			} {
				rec.await(t, c.command+" "+c.mailbox, "u1", c.command, c.p)
			}
			deadline := time.Now().Add(10 * time.Second)
			for !rec.has(func(c change.Change) bool { return c.Event == "mail_delivery_finished" }) {
				if time.Now().After(deadline) {
					t.Fatal("no change for the LMTP delivery to u1+shared/u2/Shared1")
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // anything else arrives too
			rec.mu.Lock()
			for _, c := range rec.changes {
				// Dovecot 2.3's delivery names the recipient as given
				// (u1@example.test), 2.4's as the userdb has it.
				if c.User != "u1" && c.User != "u1@example.test" {
					t.Errorf("a change of %q (%s %s %s): every event names u1, the user who acted", c.User, c.Event, c.Command, c.Mailbox)
				}
				if c.Command == "COPY" && c.DestinationMailbox != "shared/u2/Shared1" {
					t.Errorf("COPY's destination %q, want shared/u2/Shared1", c.DestinationMailbox)
				}
			}
			rec.mu.Unlock()
			// The owner is only in the mailbox's name.
			for _, m := range []string{"shared/u2/Shared1", "Public/Team"} {
				if !rec.has(func(c change.Change) bool { return c.Command == "APPEND" && c.Mailbox == m }) {
					t.Errorf("no APPEND change with mailbox %s", m)
				}
			}

			want := contents(a)
			if got := contents(b); got == want {
				t.Fatalf("the replica has the changes before any dsync: %s", got)
			}
			// u1's dsync through the doveadm HTTP API copies them.
			if state, err = sync(http, "u1", state); err != nil {
				t.Fatalf("u1's dsync (doveadm-http): %v", err)
			}
			if got := contents(b); got != want {
				t.Fatalf("after u1's dsync through doveadm-http, the replica has %s; the source %s", got, want)
			}

			// And through a doveadm process.
			if tagged, err := s.Append(ctx, "shared/u2/Shared1", "", dovecottest.TestMessage("to shared again", "x")); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("APPEND: %v %s", err, tagged)
			}
			if _, tagged, err := s.Cmd(ctx, `STORE 1 -FLAGS (\Flagged)`); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("STORE in Public/Team: %v %s", err, tagged)
			}
			bin, err := a.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			want = contents(a)
			if _, err := sync(doveadm.NewExec(bin, time.Minute), "u1", state); err != nil {
				t.Fatalf("u1's dsync (doveadm-exec): %v", err)
			}
			if got := contents(b); got != want {
				t.Fatalf("after u1's dsync through doveadm-exec, the replica has %s; the source %s", got, want)
			}
		})
	}
}

// has reports whether a change that ok accepts has arrived.
func (r *changeRecorder) has(ok func(change.Change) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.changes {
		if ok(c) {
			return true
		}
	}
	return false
}
