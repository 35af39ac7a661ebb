package dovecottest_test

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestDsyncWaitsForTheUsersLock measures what a dsync answers when
// another holds the user's dsync lock (a dsync that outlived its request,
// for instance) past its lock timeout: exit code 75, the answer of a
// destination that is down, and only the log of the server that holds
// the lock says why: here the source, as both servers have one host name
// (docs/sync.md, the exit-code policy).
func TestDsyncWaitsForTheUsersLock(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			users := map[string]string{"u1": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
			dsync := func(state string) []byte {
				t.Helper()
				out, err := a.DoveadmHTTP(ctx, `[["sync",{"user":"u1","destination":["tcp:`+b.DoveadmAddr+`"],"state":"`+state+`","lockTimeout":2},"t1"]]`)
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			first := dsync("")
			m := regexp.MustCompile(`"state":"([^"]*)"`).FindSubmatch(first)
			if m == nil {
				t.Fatalf("first dsync: %s", first)
			}
			path := filepath.Join(a.Dir, "mail", "u1", ".dovecot-sync.lock")
			// dsync makes the file while it holds the lock and removes it
			// after: make it as Dovecot's user does, and hold it.
			vmail, err := user.Lookup("vmail")
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			uid, _ := strconv.Atoi(vmail.Uid)
			gid, _ := strconv.Atoi(vmail.Gid)
			if err := f.Chown(uid, gid); err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			lk := syscall.Flock_t{Type: syscall.F_WRLCK}
			if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
				t.Fatal(err)
			}
			if out := dsync(string(m[1])); !strings.Contains(string(out), `"exitCode":75`) {
				t.Fatalf("a dsync of a user whose lock is held: %s, want exit code 75", out)
			}
			if !a.LogSays("Couldn't lock "+path, 5*time.Second) {
				t.Errorf("the source's log does not say the lock is held:\n%s", a.Log())
			}
			if b.LogSays("Couldn't lock", 0) {
				t.Errorf("the replica's log speaks of the lock too:\n%s", b.Log())
			}
		})
	}
}
