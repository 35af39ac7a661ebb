package dovecottest_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// TestDsyncOutlivesItsHTTPRequest pins a fact the sync function's rules
// rest on (docs/sync.md, --dsync-lock-timeout): a dsync whose doveadm HTTP
// request is cut off (a stop, --request-timeout, --dsync-timeout) can keep
// running in Dovecot, after dovewarden has given up the user's Redis lock.
//
// The destination accepts the connection and never answers doveadm's
// handshake: dsync's stall timeout, which dovewarden sends (1 s here),
// does not cover that wait (TestDsyncStallEndsAtItsTimeout has one it
// does), so the dsync waits until the test closes the connection.
func TestDsyncOutlivesItsHTTPRequest(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: map[string]string{"u1": "pass"}})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted <- c
				}
			}()
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword}
			if _, err := doveadm.NewHTTP(nil, time.Second).Sync(context.Background(), ep,
				doveadm.SyncRequest{User: "u1", Destination: "tcp:" + ln.Addr().String(), LockTimeout: 30 * time.Second}); err == nil {
				t.Fatal("the dsync succeeded; its destination never answers")
			}
			var c net.Conn
			select {
			case c = <-accepted:
				t.Cleanup(func() { c.Close() })
			case <-time.After(5 * time.Second):
				t.Fatalf("the dsync never connected to its destination; log:\n%s", a.Log())
			}
			// It sends its handshake, then waits: still connected 3 s after
			// its request was cut off.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 4096)
			for {
				_, err := c.Read(buf)
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					return
				}
				if err != nil {
					t.Fatalf("the dsync let go of its destination after its request was cut off (%v): Dovecot now stops it, and docs/sync.md needs another look", err)
				}
			}
		})
	}
}

// TestDsyncStallEndsAtItsTimeout: a destination that stalls once dsync's
// streams began (a replica whose storage hangs) no longer keeps the
// dsync, its doveadm process and dsync's lock on the user in Dovecot
// long after dovewarden cut its HTTP request off at its bound: dovewarden
// sends the bound as dsync's stall timeout, and Dovecot ends the dsync
// then (exit code 75, "I/O has stalled"). Without it the dsync waited
// Dovecot's 600 s.
//
// A proxy in front of a real replica forwards doveadm's handshake and the
// start of dsync's, then nothing more, keeping both connections open.
func TestDsyncStallEndsAtItsTimeout(t *testing.T) {
	needRoot(t)
	const bound = 2 * time.Second
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			users := map[string]string{"u1": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			var stalled atomic.Bool
			sourceLeft := make(chan struct{})
			go func() {
				src, err := ln.Accept()
				if err != nil {
					return
				}
				defer src.Close()
				dst, err := net.Dial("tcp", strings.TrimPrefix(b.Destination, "tcp:"))
				if err != nil {
					t.Error(err)
					return
				}
				defer dst.Close()
				go stallAfter(src, dst, "\tdsync\t", &stalled)
				// The source's side ends when its dsync does.
				stallAfter(dst, src, "", &stalled)
				close(sourceLeft)
			}()
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword}
			start := time.Now()
			_, err = doveadm.NewHTTP(nil, bound).Sync(context.Background(), ep,
				doveadm.SyncRequest{User: "u1", Destination: "tcp:" + ln.Addr().String(), LockTimeout: 30 * time.Second})
			if err == nil || !stalled.Load() {
				t.Fatalf("the dsync answered %v (stalled: %v); want it cut off in the stall", err, stalled.Load())
			}
			select {
			case <-sourceLeft:
				t.Logf("cut off: %v; the dsync ended %s after it began", err, time.Since(start).Round(time.Millisecond))
			case <-time.After(bound + 10*time.Second):
				t.Fatalf("the dsync still waits for its stalled destination %s after its request was cut off at %s; log:\n%s", time.Since(start).Round(time.Second), bound, a.Log())
			}
			if !a.LogSays("I/O has stalled", 5*time.Second) {
				t.Fatalf("the source's log does not name the stall:\n%s", a.Log())
			}
		})
	}
}

// stallAfter copies from to to until it has passed on a read holding
// marker (never, when marker is empty, unless another stallAfter's
// marker came first), then drops all that comes: the peers stay
// connected and hear nothing more. It returns when from's side ends.
func stallAfter(to, from net.Conn, marker string, stalled *atomic.Bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !stalled.Load() {
			to.Write(buf[:n])
			if marker != "" && strings.Contains(string(buf[:n]), marker) {
				stalled.Store(true)
			}
		}
		if err != nil {
			return
		}
	}
}

// TestDsyncCutOffKeepsWhatItCopied pins the fact that lets a mailbox
// larger than one dsync's time be replicated at all (docs/deployment.md):
// a dsync killed at --dsync-timeout (doveadm-exec kills the process)
// leaves on the replica the messages it had copied, and the next full
// dsync goes on from there instead of starting over. Dsync commits its
// imports in batches as it goes.
func TestDsyncCutOffKeepsWhatItCopied(t *testing.T) {
	needRoot(t)
	const n = 1000
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			users := map[string]string{"u1": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
			ctx := context.Background()
			c, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			body := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 400)
			for i := range n {
				if tagged, err := c.Append(ctx, "INBOX", "", dovecottest.TestMessage(fmt.Sprintf("m%d", i), body)); err != nil || !dovecottest.IsOK(tagged) {
					t.Fatalf("APPEND %d: %v %s", i, err, tagged)
				}
			}
			c.Close()
			bin, err := a.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ep := doveadm.Endpoint{Config: a.ConfigPath}
			count := func() int {
				// Until a dsync has given the replica's INBOX its GUID
				// (kept in the INBOX's dovecot-uidlist), asking Dovecot
				// 2.3 about INBOX creates it with a GUID of its own, and
				// every later dsync fails with exit code 2 ("Remote lost
				// mailbox GUID", docs/operations.md): a first attempt cut
				// off before it created INBOX (a loaded machine) made
				// every later one fail so.
				if _, err := os.Stat(filepath.Join(b.Dir, "mail", "u1", "Maildir", "dovecot-uidlist")); errors.Is(err, fs.ErrNotExist) {
					return 0
				}
				out, err := b.Doveadm(ctx, "mailbox", "status", "-u", "u1", "messages", "INBOX")
				if err != nil {
					t.Fatal(err)
				}
				var m int
				if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "INBOX messages=%d", &m); err != nil {
					t.Fatalf("mailbox status %q: %v", out, err)
				}
				return m
			}
			// Each attempt is cut off, as --dsync-timeout cuts one, and
			// gets a little longer when it copied nothing (a loaded
			// machine), so that the test ends.
			timeout, had, partial := 400*time.Millisecond, 0, false
			for attempt := 1; ; attempt++ {
				_, err := doveadm.NewExec(bin, timeout).Sync(ctx, ep, doveadm.SyncRequest{User: "u1", Destination: b.Destination, Full: true})
				got := count()
				t.Logf("attempt %d (%s): %d of %d messages on the replica, err %v", attempt, timeout, got, n, err)
				if got < had {
					t.Fatalf("the replica had %d messages and now %d: a cut-off dsync lost what an earlier one had copied", had, got)
				}
				if err == nil {
					if got != n {
						t.Fatalf("the dsync succeeded with %d of %d messages on the replica", got, n)
					}
					break
				}
				if got > 0 && got < n {
					partial = true
				}
				if got == had {
					timeout += 400 * time.Millisecond
				}
				had = got
				if attempt == 40 {
					t.Fatalf("%d of %d messages after %d cut-off dsyncs", got, n, attempt)
				}
			}
			if !partial {
				t.Fatalf("no dsync was cut off half-way (the first ran to its end within %s): the test proves nothing; give it more messages", 400*time.Millisecond)
			}
		})
	}
}
