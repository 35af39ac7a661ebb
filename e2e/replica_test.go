package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReplicaWiped: the replica's mail store is lost and B comes back
// empty at the same address, while Redis still holds the user's dsync
// state from before. The user's next change runs a dsync with that state.
// The replica's side then answers exit code 2 on every incremental dsync
// (Dovecot 2.3 logs "Failed to do incremental sync for mailbox INBOX,
// retry with a full sync (uidnext 1 < 3)"; 2.4 now and then too), and no
// message reaches B until a full one runs. Sync must run it: the old mail
// and the new message must reach B with no action of an administrator.
// A user with no change since (u2) gets no dsync until its periodic full
// sync; `dovewarden sweep --all`, which docs/operations.md tells the
// administrator to run after replacing a replica, brings it back at once.
func TestReplicaWiped(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v23, v23}, {shapeLocal, v24, v24}}, func(t *testing.T, c pairCase) {
		const user, idle = "u1", "u2"
		s := newSystem(t, c.config(user, idle))

		// The user's mail replicated by dovewarden, the last dsync an
		// incremental one with a state.
		start := time.Now()
		s.deliver(user, "before-0")
		s.awaitResult(user, start)
		s.awaitConverged(user)
		start = time.Now()
		s.do(s.imap(s.a, user), "CREATE Kept")
		s.awaitResult(user, start)
		s.appendN(s.a, user, "old", 3)
		s.awaitConverged(user)

		start = time.Now()
		s.deliver(idle, "before-0")
		s.awaitResult(idle, start)
		s.awaitConverged(idle)

		// The replica is replaced: its copy of the users is gone. Nothing
		// reads B for a user before a dsync has run (Dovecot 2.3 would
		// give its INBOX a GUID of its own: docs/operations.md).
		if err := s.b.Halt(); err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{user, idle} {
			if err := os.RemoveAll(filepath.Join(s.b.Dir, "mail", u)); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.b.Restart(s.ctx); err != nil {
			t.Fatal(err)
		}

		start = time.Now()
		s.deliver(user, "new-0")
		s.awaitResult(user, start)
		snap := s.awaitConverged(user)[user]
		wantMessages(t, snap, "old", 3)
		wantMessages(t, snap, "new", 1)
		if !snap.has(`mailbox "Kept"`) {
			t.Errorf("the folder is missing:\n%s", snap)
		}

		start = time.Now()
		s.requestSweep("--all")
		s.awaitResult(idle, start)
		wantMessages(t, s.awaitConverged(idle)[idle], "before", 1)
	})
}
