package e2e

import (
	"testing"
	"time"
)

// TestAutoexpunge: a message that Trash's autoexpunge setting removes on A
// when the user's IMAP session ends, with no command of its own, is
// removed on B too. B has no autoexpunge: only replication can remove it
// there.
func TestAutoexpunge(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v23, v23}, {shapeSplit, v24, v24}}, func(t *testing.T, c pairCase) {
		const after = 5 * time.Second
		cfg := c.config("u1")
		cfg.dovecotA = "\nnamespace inbox {\n  mailbox Trash {\n    autoexpunge = 5s\n  }\n}\n"
		s := newSystem(t, cfg)

		in := s.imap(s.a, "u1")
		if _, err := in.Append(s.ctx, "Trash", "", message("u1", "old-0", "Deleted long ago.")); err != nil {
			t.Fatal(err)
		}
		saved := time.Now()
		in.Close()
		// The message must reach B before autoexpunge removes it on A
		// (after which it never would): then both have it.
		wantMessages(t, s.awaitConverged("u1")["u1"], "old", 1)

		// The next session's end on A, once the message is old enough,
		// removes it there.
		time.Sleep(time.Until(saved.Add(after + 200*time.Millisecond)))
		in = s.imap(s.a, "u1")
		if _, tagged, err := in.Cmd(s.ctx, "LOGOUT"); err != nil {
			t.Fatalf("LOGOUT: %v %s", err, tagged)
		}
		in.Close()
		if snap := s.awaitConverged("u1")["u1"]; snap.has("<old-0.") {
			t.Fatalf("autoexpunge did not remove the message on A:\n%s", snap)
		}
	})
}
