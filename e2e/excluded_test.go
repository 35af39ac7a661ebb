package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestExcludedUser: local mode with --excluded-users. An excluded user's
// new mail on A never reaches B (its changes are acknowledged without a
// dsync, and the sweep at start skips it) while another user's does;
// once the file no longer names it and SIGHUP reloads the file, the
// user's next change replicates everything, the held mail included.
func TestExcludedUser(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v24, v24}}, func(t *testing.T, c pairCase) {
		file := filepath.Join(t.TempDir(), "excluded")
		write := func(s string) {
			t.Helper()
			if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// Upper case: normalised like the events' users (--username-format).
		write("# kept off the replica\nARCHIVE\n")
		cfg := c.config("archive", "kept")
		cfg.syncFlags = []string{"--excluded-users", file}
		s := newSystem(t, cfg)

		s.appendN(s.a, "archive", "held", 2)
		s.appendN(s.a, "kept", "kept", 1)
		wantMessages(t, s.awaitConverged("kept")["kept"], "kept", 1)
		// archive's changes reached sync and were acknowledged there.
		excluded := func() error {
			if n := metric(t, s.ingestBase, "dovewarden_sync_decisions_total", `decision="excluded"`); n < 1 {
				return errNotYet(fmt.Sprintf("%v excluded decisions", n))
			}
			return nil
		}
		if err := poll(s.ctx, convergeLimit, 50*time.Millisecond, excluded); err != nil {
			t.Fatal(err)
		}
		a, b := s.snapshots("archive")
		wantMessages(t, a, "held", 2)
		if b.has("<held-") {
			t.Fatalf("the excluded user's mail reached B:\n%s", b)
		}

		// Taken back: the file no longer names it.
		write("# nobody\n")
		if err := syscall.Kill(s.local.cmd.Process.Pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		reloaded := func() error {
			if n := metric(t, s.ingestBase, "dovewarden_excluded_users_loads_total", `outcome="success"`); n < 2 {
				return errNotYet(fmt.Sprintf("%v loads", n))
			}
			return nil
		}
		if err := poll(s.ctx, 10*time.Second, 50*time.Millisecond, reloaded); err != nil {
			t.Fatal(err)
		}
		s.local.checkAlive()
		s.do(s.imap(s.a, "archive"), "CREATE Back")
		snap := s.awaitConverged("archive")["archive"]
		wantMessages(t, snap, "held", 2)
		if !snap.has(`mailbox "Back"`) {
			t.Errorf("the folder that started the dsync is missing:\n%s", snap)
		}
	})
}
