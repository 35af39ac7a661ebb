package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestFirstSyncWithoutState: both servers take one new message in INBOX
// while ingest is down, so that INBOX differs but its counters (UIDNEXT,
// HIGHESTMODSEQ, message count) are the same on both. dovewarden has no
// dsync state for the user yet. A dsync without a state and without -f
// compares only those counters and skips INBOX; the first dsync must
// therefore be a full one, and both messages must end on both servers.
// Another folder's change is what starts it.
func TestFirstSyncWithoutState(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v24, v24}, {shapeSplit, v23, v23}}, func(t *testing.T, c pairCase) {
		s := newSystem(t, c.config("u1"))
		s.ingest.stop()
		s.appendN(s.a, "u1", "on-a", 1)
		s.appendN(s.b, "u1", "on-b", 1)
		counters := func(side string) string {
			in := s.a
			if side == "b" {
				in = s.b
			}
			out, err := in.Doveadm(s.ctx, "mailbox", "status", "-u", "u1", "uidvalidity uidnext highestmodseq messages", "INBOX")
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(out))
		}
		if a, b := counters("a"), counters("b"); a != b {
			t.Fatalf("INBOX counters differ (%q on A, %q on B): the scenario needs them equal", a, b)
		}
		s.ingest.start()
		s.ingest.waitHTTP(s.ingestBase+"/readyz", 20*time.Second)
		start := time.Now()
		s.do(s.imap(s.a, "u1"), "CREATE Later")
		s.awaitResult("u1", start)
		snap := s.awaitConverged("u1")["u1"]
		wantMessages(t, snap, "on-a", 1)
		wantMessages(t, snap, "on-b", 1)
		if !snap.has(`mailbox "Later"`) {
			t.Errorf("the folder that started the dsync is missing:\n%s", snap)
		}
	})
}
