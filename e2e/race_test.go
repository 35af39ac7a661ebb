package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestChangeDuringDsync makes changes while the user's dsync runs, which
// is what a busy mailbox does all day: a folder is deleted moments after
// a MULTIAPPEND into it started a dsync, at a range of delays so that
// some DELETE lands inside the dsync. Each must converge: the DELETE's
// event finds the lock held and is merged into the running dsync, whose
// owner runs again for it.
func TestChangeDuringDsync(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v23, v23}, {shapeSplit, v24, v24}}, func(t *testing.T, c pairCase) {
		s := newSystem(t, c.config("u1"))
		sess := s.imap(s.a, "u1")
		for i := 0; i <= 10; i++ {
			delay := time.Duration(3*i) * time.Millisecond
			mb := fmt.Sprintf("Doomed%d", i)
			start := time.Now()
			// The last DELETE's dsync may still run: Dovecot (2.3 and
			// 2.4) can answer a CREATE made then with NO [ALREADYEXISTS]
			// though it created the folder (docs/operations.md, "Known
			// Dovecot pitfalls"). The MULTIAPPEND below needs it.
			if _, tagged, err := sess.Cmd(s.ctx, "CREATE "+mb); err != nil || !(dovecottest.IsOK(tagged) || strings.Contains(tagged, "[ALREADYEXISTS]")) {
				t.Fatalf("IMAP CREATE %s: %v %s", mb, err, tagged)
			}
			s.awaitConverged("u1")
			s.awaitResult("u1", start)
			segs := []string{"APPEND " + mb}
			for j := 0; j < 300; j++ {
				if j > 0 {
					segs = append(segs, "")
				}
				segs = append(segs, message("u1", fmt.Sprintf("%s-%d", mb, j), strings.Repeat("Doomed mail. ", 20)))
			}
			if _, tagged, err := sess.CmdLit(s.ctx, append(segs, "")...); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("MULTIAPPEND: %v %s", err, tagged)
			}
			time.Sleep(delay)
			s.do(sess, "DELETE "+mb)
			if _, err := s.converged("u1", convergeLimit); err != nil {
				t.Fatalf("DELETE %s %s after the MULTIAPPEND that started a dsync did not replicate: %v%s", mb, delay, err, s.notFoundHint("u1"))
			}
		}
		// Some DELETE must have found its user's dsync running and been
		// merged into it, for its owner to run again: after a success (a
		// rerun), or as the retry of a dsync that the DELETE made fail
		// (exit code 68, "Mailbox was deleted under us", which on a busy
		// machine can be every try). Otherwise the scenario exercised
		// nothing (a change merged and then forgotten would still
		// converge at the next change).
		if n := metric(t, s.syncMetrics(), "dovewarden_sync_coalesced_changes_total", `how="merged"`); n == 0 {
			t.Errorf("no change landed in a running dsync (dovewarden_sync_coalesced_changes_total{how=\"merged\"} 0 after 11 tries): nothing exercised the merge")
		}
	})
}

// notFoundHint explains a failure to converge when sync gave up on a
// dsync that answered exit code 68.
func (s *system) notFoundHint(user string) string {
	for _, r := range s.events.results("org.dovewarden.replication.failed") {
		if r.User == user && r.Class == "not_found" {
			return "\ndsync answered exit code 68 (\"Mailbox was deleted under us\"; retry_by " + r.RetryBy + "): " +
				"pkg/doveadm/policy.go runs it once more as a full sync, which should carry the deletion; " +
				"if it did not converge, that rerun did not resolve the race\n"
		}
	}
	return ""
}
