package e2e

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// step is one change made on a server, followed by a wait until the
// other server shows the same state.
type step struct {
	name string
	// only limits the step to one Dovecot version ("" for both).
	only string
	// sieve marks a change of the user's Sieve scripts: runSteps starts
	// it in a later second than the change of the step before.
	sieve bool
	run   func(w *writer)
}

// writer makes a scenario's changes for one user on one server, over one
// IMAP session that keeps its selected mailbox between steps.
type writer struct {
	s    *system
	in   *dovecottest.Instance
	user string
	imap *dovecottest.IMAPSession
}

func (w *writer) do(cmds ...string) { w.s.t.Helper(); w.s.do(w.imap, cmds...) }

// doveadm runs a doveadm command on the writer's server, as an
// administrator would.
func (w *writer) doveadm(args ...string) {
	w.s.t.Helper()
	if out, err := w.in.Doveadm(w.s.ctx, args...); err != nil {
		w.s.t.Fatalf("doveadm %v: %v %s", args, err, out)
	}
}

// sieve runs f in a ManageSieve session of the writer's user on its
// server, as a webmail's filter settings do.
func (w *writer) sieve(f func(*dovecottest.ManageSieveSession) error) {
	w.s.t.Helper()
	ms, err := dovecottest.LoginManageSieve(w.s.ctx, w.in.ManageSieveAddr, w.user, password)
	if err != nil {
		w.s.t.Fatal(err)
	}
	defer ms.Close()
	if err := errors.Join(f(ms), ms.Logout(w.s.ctx)); err != nil {
		w.s.t.Fatal(err)
	}
}

// seq returns the sequence number of the message with uid in the selected
// mailbox, for the commands that take sequence numbers.
func (w *writer) seq(uid int) int {
	w.s.t.Helper()
	untagged, tagged, err := w.imap.Cmd(w.s.ctx, fmt.Sprintf("SEARCH UID %d", uid))
	if err != nil || !dovecottest.IsOK(tagged) {
		w.s.t.Fatalf("SEARCH UID %d: %v %s", uid, err, tagged)
	}
	for _, l := range untagged {
		var n int
		if _, err := fmt.Sscanf(l, "* SEARCH %d", &n); err == nil {
			return n
		}
	}
	w.s.t.Fatalf("no message with UID %d in the selected mailbox", uid)
	return 0
}

// appendMsgs stores messages in mailbox with one APPEND (MULTIAPPEND when
// there are several).
func (w *writer) appendMsgs(mailbox, flags string, tags ...string) {
	w.s.t.Helper()
	head := "APPEND " + dovecottest.Quote(mailbox)
	if flags != "" {
		head += " " + flags
	}
	segs := []string{head}
	for i, tag := range tags {
		if i > 0 {
			segs = append(segs, "")
		}
		segs = append(segs, message(w.user, tag, "Body of "+tag+"."))
	}
	segs = append(segs, "")
	if _, tagged, err := w.imap.CmdLit(w.s.ctx, segs...); err != nil || !dovecottest.IsOK(tagged) {
		w.s.t.Fatalf("APPEND %v: %v %s", tags, err, tagged)
	}
}

// commandSteps are the changes of the classification table
// (pkg/dovecot/commands.go), each one on its own, then LMTP delivery and
// POP3. UIDs in INBOX are known: the seed is 1, then 2, 3, ... in order.
// Not here: SETQUOTA (Dovecot keeps the limit in a dict that dsync does
// not replicate: nothing to compare), GENURLAUTH and RESETKEY (the test
// instances run no URLAUTH service).
var commandSteps = []step{
	{name: "LMTP delivery", run: func(w *writer) { // UID 2
		if err := dovecottest.DeliverLMTP(w.in.LMTPAddr, "sender@example.test", w.user+"@example.test", message(w.user, "lmtp", "Delivered.")); err != nil {
			w.s.t.Fatal(err)
		}
	}},
	{name: "APPEND", run: func(w *writer) { w.appendMsgs("INBOX", `(\Flagged)`, "append") }},          // UID 3
	{name: "MULTIAPPEND", run: func(w *writer) { w.appendMsgs("INBOX", "", "m4", "m5", "m6", "m7") }}, // UIDs 4-7
	{name: "CREATE", run: func(w *writer) { w.do("CREATE Projects") }},
	{name: "CREATE (modified UTF-7 name)", run: func(w *writer) { w.do(`CREATE "Entw&APw-rfe"`) }},
	{name: "CREATE (child)", run: func(w *writer) { w.do("CREATE Tmp/Child") }},
	{name: "RENAME", run: func(w *writer) { w.do("RENAME Tmp/Child Renamed") }},
	{name: "CREATE (to delete)", run: func(w *writer) { w.do("CREATE Gone") }},
	{name: "DELETE", run: func(w *writer) { w.do("DELETE Gone") }},
	{name: "SUBSCRIBE", run: func(w *writer) { w.do("SUBSCRIBE Projects", "SELECT INBOX") }},
	{name: "SUBSCRIBE (second)", run: func(w *writer) { w.do("SUBSCRIBE Renamed") }},
	{name: "UNSUBSCRIBE", run: func(w *writer) {
		// dsync keeps subscription changes with one-second timestamps and
		// lets "subscribed" win a tie: a flip back within the second of
		// the SUBSCRIBE that was already replicated would be undone.
		time.Sleep(1100 * time.Millisecond)
		w.do("UNSUBSCRIBE Renamed")
	}},
	{name: "STORE flag", run: func(w *writer) { w.do(fmt.Sprintf(`STORE %d +FLAGS (\Answered)`, w.seq(1))) }},
	{name: "UID STORE keywords", run: func(w *writer) { w.do(`UID STORE 2 +FLAGS ($Work Important)`) }},
	{name: "STORE -FLAGS", run: func(w *writer) { w.do(fmt.Sprintf(`STORE %d -FLAGS (\Flagged)`, w.seq(3))) }},
	{name: "COPY", run: func(w *writer) { w.do(fmt.Sprintf("COPY %d Projects", w.seq(2))) }},
	{name: "UID COPY", run: func(w *writer) { w.do("UID COPY 3 Renamed") }},
	{name: "MOVE (to a modified UTF-7 name)", run: func(w *writer) { w.do(fmt.Sprintf(`MOVE %d "Entw&APw-rfe"`, w.seq(4))) }},
	{name: "UID MOVE", run: func(w *writer) { w.do("UID MOVE 5 Projects") }},
	{name: "FETCH BODY[] sets \\Seen", run: func(w *writer) { w.do(fmt.Sprintf("FETCH %d BODY[]", w.seq(6))) }},
	{name: "UID FETCH RFC822 sets \\Seen", run: func(w *writer) { w.do("UID FETCH 7 RFC822") }},
	{name: "STORE \\Deleted", run: func(w *writer) { w.do(fmt.Sprintf(`STORE %d +FLAGS.SILENT (\Deleted)`, w.seq(2))) }},
	{name: "EXPUNGE", run: func(w *writer) { w.do("EXPUNGE") }},
	{name: "UID STORE \\Deleted", run: func(w *writer) { w.do(`UID STORE 3 +FLAGS (\Deleted)`) }},
	{name: "UID EXPUNGE", run: func(w *writer) { w.do("UID EXPUNGE 3") }},
	{name: "STORE \\Deleted in Projects", run: func(w *writer) { w.do("SELECT Projects", `STORE 1 +FLAGS (\Deleted)`) }},
	{name: "CLOSE", run: func(w *writer) { w.do("CLOSE") }},
	{name: "SETMETADATA mailbox", run: func(w *writer) {
		w.do(`SETMETADATA INBOX (/private/comment "private note" /shared/comment "shared note")`)
	}},
	{name: "SETMETADATA server", run: func(w *writer) { w.do(`SETMETADATA "" (/private/comment "server note")`) }},
	{name: "SETMETADATA NIL", run: func(w *writer) { w.do(`SETMETADATA INBOX (/shared/comment NIL)`) }},
	{name: "SETACL", run: func(w *writer) { w.do("SETACL Projects bob lrs") }},
	{name: "DELETEACL", run: func(w *writer) { w.do("SETACL Renamed carol lr", "DELETEACL Projects bob") }},
	{name: "REPLACE", only: dovecottest.V24, run: func(w *writer) {
		w.do("SELECT INBOX")
		msg := message(w.user, "replaced", "The new version.")
		if _, tagged, err := w.imap.CmdLit(w.s.ctx, fmt.Sprintf("REPLACE %d INBOX", w.seq(6)), msg, ""); err != nil || !dovecottest.IsOK(tagged) {
			w.s.t.Fatalf("REPLACE: %v %s", err, tagged)
		}
	}},
	{name: "UID REPLACE", only: dovecottest.V24, run: func(w *writer) {
		msg := message(w.user, "uid-replaced", "The new version.")
		if _, tagged, err := w.imap.CmdLit(w.s.ctx, "UID REPLACE 7 INBOX", msg, ""); err != nil || !dovecottest.IsOK(tagged) {
			w.s.t.Fatalf("UID REPLACE: %v %s", err, tagged)
		}
	}},
	{name: "doveadm flags add (an administrator's change)", run: func(w *writer) {
		w.doveadm("flags", "add", "-u", w.user, "$Reviewed", "mailbox", "INBOX", "all")
	}},
	{name: "doveadm mailbox create", run: func(w *writer) { w.doveadm("mailbox", "create", "-u", w.user, "Made by admin") }},
	{name: "ManageSieve PUTSCRIPT and SETACTIVE (a webmail's vacation reply)", sieve: true, run: func(w *writer) {
		w.sieve(func(ms *dovecottest.ManageSieveSession) error {
			return errors.Join(ms.PutScript(w.s.ctx, "vacation", "require \"vacation\";\nvacation :days 7 \"Away until Monday.\";\n"),
				ms.SetActive(w.s.ctx, "vacation"))
		})
	}},
	{name: "ManageSieve PUTSCRIPT", sieve: true, run: func(w *writer) {
		w.sieve(func(ms *dovecottest.ManageSieveSession) error {
			return ms.PutScript(w.s.ctx, "filter", "require \"fileinto\";\nif header :contains \"subject\" \"[list]\" { fileinto \"Projects\"; }\n")
		})
	}},
	{name: "doveadm sieve activate (an administrator's change)", sieve: true, run: func(w *writer) {
		w.doveadm("sieve", "activate", "-u", w.user, "filter")
	}},
	{name: "ManageSieve SETACTIVE \"\" (no script active)", sieve: true, run: func(w *writer) {
		w.sieve(func(ms *dovecottest.ManageSieveSession) error { return ms.SetActive(w.s.ctx, "") })
	}},
	{name: "ManageSieve DELETESCRIPT", sieve: true, only: dovecottest.V23, run: func(w *writer) {
		// Not on 2.4: Dovecot 2.4.1's dsync often brings a script deleted
		// there back from the other server (operations.md).
		w.sieve(func(ms *dovecottest.ManageSieveSession) error { return ms.DeleteScript(w.s.ctx, "vacation") })
	}},
	{name: "LMTP delivery (to fetch over POP3)", run: func(w *writer) {
		if err := dovecottest.DeliverLMTP(w.in.LMTPAddr, "sender@example.test", w.user+"@example.test", message(w.user, "pop3", "Fetched.")); err != nil {
			w.s.t.Fatal(err)
		}
	}},
	{name: "POP3 RETR sets \\Seen, and the client goes without QUIT", run: func(w *writer) {
		// Dovecot writes \Seen when the session ends, and no event but the
		// session's end says so.
		p, err := dovecottest.LoginPOP3(w.s.ctx, w.in.POP3Addr, w.user, password)
		if err != nil {
			w.s.t.Fatal(err)
		}
		defer p.Close()
		r, err := p.Cmd(w.s.ctx, "STAT")
		var n, size int
		if err != nil || !strings.HasPrefix(r, "+OK") {
			w.s.t.Fatalf("POP3 STAT: %v %s", err, r)
		}
		if _, err := fmt.Sscanf(r, "+OK %d %d", &n, &size); err != nil || n == 0 {
			w.s.t.Fatalf("POP3 STAT %q: %v", r, err)
		}
		if r, _, err := p.CmdMulti(w.s.ctx, fmt.Sprintf("RETR %d", n)); err != nil || !strings.HasPrefix(r, "+OK") {
			w.s.t.Fatalf("POP3 RETR %d: %v %s", n, err, r)
		}
	}},
	{name: "POP3 RETR and DELE", run: func(w *writer) {
		p, err := dovecottest.LoginPOP3(w.s.ctx, w.in.POP3Addr, w.user, password)
		if err != nil {
			w.s.t.Fatal(err)
		}
		defer p.Close()
		for _, c := range []string{"DELE 1", "QUIT"} {
			if r, err := p.Cmd(w.s.ctx, c); err != nil || !strings.HasPrefix(r, "+OK") {
				w.s.t.Fatalf("POP3 %s: %v %s", c, err, r)
			}
		}
	}},
}

// runSteps makes each step's change on in for user and waits until the
// other server shows the same state. Each step must change what the
// snapshot sees, so a step that silently does nothing cannot pass.
func runSteps(t *testing.T, s *system, in *dovecottest.Instance, user string, steps []step) {
	w := &writer{s: s, in: in, user: user, imap: s.imap(in, user)}
	before, _ := s.snapshots(user)
	var changed time.Time // when the last step's change was made
	for _, st := range steps {
		if st.only != "" && st.only != in.Version {
			continue
		}
		if st.sieve {
			// Pigeonhole dates the active script's attribute with the
			// script folder's mtime, in whole seconds, and every upload
			// changes it; dsync resolves a tie within the second by
			// modseq, which can pick the other server's copy. A change
			// of the active script within the second of a Sieve change
			// that was already replicated can then be undone on both
			// servers (docs/operations.md, "Known Dovecot pitfalls").
			time.Sleep(time.Until(changed.Truncate(time.Second).Add(time.Second)))
		}
		start := time.Now()
		st.run(w)
		changed = time.Now()
		after := s.awaitConverged(user)[user]
		// The servers agree a little before the dsync that made them agree
		// returns. Let it return, so that each step's change meets no
		// dsync: a change during one is TestChangeDuringDsync's case.
		s.awaitResult(user, start)
		if after.equal(before) {
			t.Fatalf("step %q changed nothing the snapshot sees on %s:\n%s", st.name, in.Name, after)
		}
		t.Logf("step %q replicated", st.name)
		before = after
	}
}

// TestCommands is scenario 1: every command of the classification table,
// LMTP delivery and POP3 DELE on one server, each replicated to the other
// (mailboxes, subscriptions, messages and bodies, flags and keywords,
// METADATA and ACLs equal) within the deadline. Mixed pairs run the steps
// in both directions: u1 changes on A, u2 on B (the host map syncs each
// change from where it was seen).
func TestCommands(t *testing.T) {
	eachCase(t, []pairCase{
		{shapeLocal, v23, v23}, {shapeSplit, v23, v23},
		{shapeLocal, v24, v24}, {shapeSplit, v24, v24},
		{shapeLocal, v23, v24}, {shapeSplit, v24, v23},
	}, func(t *testing.T, c pairCase) {
		mixed := c.a != c.b
		users := []string{"u1"}
		if mixed {
			users = append(users, "u2")
		}
		s := newSystem(t, c.config(users...))
		runSteps(t, s, s.a, "u1", commandSteps)
		if mixed {
			runSteps(t, s, s.b, "u2", commandSteps)
		}
	})
}
