package dovecottest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestDsyncToAFullReplica measures what dsync answers when the replica's
// disk is full, and what the next dsync does once there is room again: the
// replica's mail is on a 400 KiB tmpfs that 20 messages of 50 KiB overflow.
// dsync answers exit code 75, as for a replica that is down, having copied
// some of the messages; the next dsync with the state from before the
// failure (what sync keeps after a 75) copies the rest, each message once
// (docs/operations.md, "Known Dovecot pitfalls").
func TestDsyncToAFullReplica(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dir, err := os.MkdirTemp("", "dovecottest-full-")
			if err != nil {
				t.Fatal(err)
			}
			mail := filepath.Join(dir, "mail")
			if err := os.Mkdir(mail, 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", mail).CombinedOutput(); err != nil {
				t.Fatalf("mount a small tmpfs: %v: %s", err, out)
			}
			// Registered first, so it runs after the instance has stopped.
			t.Cleanup(func() {
				if out, err := exec.Command("umount", mail).CombinedOutput(); err != nil {
					t.Errorf("umount: %v: %s", err, out)
				}
				os.RemoveAll(dir)
			})
			users := map[string]string{"u1": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users, Dir: dir})
			s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			dsync := func(state string) (string, int) { return httpDsync(ctx, t, a, b, "u1", state) }
			if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage("first", "x")); err != nil {
				t.Fatal(err)
			}
			state, code := dsync("")
			if code != 0 {
				t.Fatalf("first dsync: exit code %d", code)
			}
			line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
			for i := range 20 {
				if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage(fmt.Sprint("big ", i), strings.Repeat(line, 750))); err != nil {
					t.Fatal(err)
				}
			}
			if _, code := dsync(state); code != 75 {
				t.Fatalf("dsync to a full replica: exit code %d, want 75", code)
			}
			if !b.LogSays("No space left on device", 5*time.Second) {
				t.Fatalf("the replica's log does not say why:\n%s", b.Log())
			}
			partial := messages(t, b, "u1", "INBOX")
			t.Logf("the replica holds %s of 21 after the failed dsync", partial)
			if out, err := exec.Command("mount", "-o", "remount,size=20m", mail).CombinedOutput(); err != nil {
				t.Fatalf("make room: %v: %s", err, out)
			}
			if _, code := dsync(state); code != 0 {
				t.Fatalf("dsync with the old state once there is room: exit code %d", code)
			}
			if got := messages(t, b, "u1", "INBOX"); got != "messages=21" {
				t.Fatalf("replica %s, want messages=21 (each message once)", got)
			}
			if got := messages(t, a, "u1", "INBOX"); got != "messages=21" {
				t.Fatalf("source %s, want messages=21 (each message once)", got)
			}
		})
	}
}

// httpDsync runs user's dsync from a to b through a's doveadm HTTP API,
// from state ("" for a full one), and returns the new state, or the exit
// code doveadm answered instead.
func httpDsync(ctx context.Context, t *testing.T, a, b *dovecottest.Instance, user, state string) (string, int) {
	t.Helper()
	return httpDsyncFull(ctx, t, a, b, user, state, false)
}

// httpDsyncFull is httpDsync with doveadm's -f (fullSync) when full is
// set.
func httpDsyncFull(ctx context.Context, t *testing.T, a, b *dovecottest.Instance, user, state string, full bool) (string, int) {
	t.Helper()
	body := fmt.Sprintf(`[["sync",{"user":%q,"destination":["tcp:%s"],"state":%q,"fullSync":%t},"t1"]]`, user, b.DoveadmAddr, state, full)
	out, err := a.DoveadmHTTP(ctx, body)
	if err != nil {
		t.Fatalf("dsync: %v", err)
	}
	if m := regexp.MustCompile(`"state":"([^"]*)"`).FindSubmatch(out); m != nil {
		return string(m[1]), 0
	}
	m := regexp.MustCompile(`"exitCode":\s*(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("dsync reply = %s", out)
	}
	code, _ := strconv.Atoi(string(m[1]))
	return "", code
}
