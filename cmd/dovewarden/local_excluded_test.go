package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestLocal_ExcludedUsersFile: the users in --excluded-users (normalised
// like the events' users) are never replicated, by a change or by the
// sweep, and their status says so; SIGHUP loads the file again, a file
// that does not load keeps the set loaded before (counted), and a user
// taken out of the file is replicated again.
func TestLocal_ExcludedUsersFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "excluded")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# archive accounts\nARCHIVE\n")
	// The sweep at start would replicate both.
	base, stop, tr, stderr := startLocal(t, []string{"archive", "kept"}, "--excluded-users", file)

	deliver := func(user string) {
		t.Helper()
		body := strings.Replace(deliveryEvent, `"user":"u1"`, `"user":"`+user+`"`, 1)
		resp, err := http.Post(base+"/events", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /events for %s: %d", user, resp.StatusCode)
		}
	}
	excluded := func(user string) bool {
		t.Helper()
		resp, err := http.Get(base + "/status/" + user)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st struct {
			Excluded bool `json:"excluded"`
		}
		if b, _ := io.ReadAll(resp.Body); json.Unmarshal(b, &st) != nil {
			t.Fatalf("status of %s: %d %s", user, resp.StatusCode, b)
		}
		return st.Excluded
	}
	metric := func(want string) {
		t.Helper()
		if m, ok := awaitMetric(t, base, want+"\n"); !ok {
			t.Fatalf("no %q in\n%s\n%s", want, m, stderr)
		}
	}

	metric("dovewarden_excluded_users 1")
	metric(`dovewarden_excluded_users_loads_total{outcome="success"} 1`)
	deliver("Archive")
	metric(`dovewarden_sync_decisions_total{decision="excluded",priority="high"} 1`)
	deliver("u1")
	for deadline := time.Now().Add(10 * time.Second); (len(tr.CallsOf("u1")) == 0 || len(tr.CallsOf("kept")) == 0) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if len(tr.CallsOf("u1")) == 0 || len(tr.CallsOf("kept")) == 0 {
		t.Fatalf("dsyncs %+v: want u1's and the sweep's of kept\n%s", tr.Calls(), stderr)
	}
	if c := tr.CallsOf("archive"); len(c) != 0 {
		t.Errorf("the excluded user was replicated: %+v", c)
	}
	if !excluded("archive") || excluded("u1") {
		t.Errorf("status: archive excluded %v, u1 excluded %v", excluded("archive"), excluded("u1"))
	}
	// The status is kept under the normalised name, as the events' users.
	if !excluded("ARCHIVE") {
		t.Error("/status/ARCHIVE does not answer with archive's record")
	}

	// A file that does not load: the set stays.
	write("ok\n-f\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	metric(`dovewarden_excluded_users_loads_total{outcome="error"} 1`)
	if !excluded("archive") {
		t.Error("a bad file took archive back")
	}
	if !strings.Contains(stderr.String(), "excluded-users: "+file+": line 2:") {
		t.Errorf("the log does not name the setting, file and line:\n%s", stderr)
	}

	// archive taken out of the file: replicated at its next change.
	write("someone-else\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	metric(`dovewarden_excluded_users_loads_total{outcome="success"} 2`)
	if excluded("archive") || !excluded("someone-else") {
		t.Errorf("after the reload: archive excluded %v, someone-else %v", excluded("archive"), excluded("someone-else"))
	}
	deliver("ARCHIVE")
	for deadline := time.Now().Add(10 * time.Second); len(tr.CallsOf("archive")) == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if len(tr.CallsOf("archive")) == 0 {
		t.Errorf("archive, no longer excluded, was not replicated\n%s", stderr)
	}
	if err := stop(); err != nil {
		t.Fatalf("local returned %v", err)
	}
}

// TestLocal_ExcludedUsersFileRefusedAtStart: a file that does not load
// stops local mode at start with a message naming the setting, the file
// and the line.
func TestLocal_ExcludedUsersFileRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "excluded")
	if err := os.WriteFile(bad, []byte("alice\n*@example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{bad, "excluded-users: " + bad + ": line 2: username \"*@example.org\" has a wildcard"},
		{filepath.Join(dir, "missing"), "excluded-users: open " + filepath.Join(dir, "missing")},
	} {
		env, _, _ := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": "x"}, "")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := run(ctx, env, []string{"local", "--listen", "127.0.0.1:0", "--excluded-users", tc.file,
			"--doveadm-url", "http://127.0.0.1:1/doveadm/v1", "--destination", "tcp:127.0.0.1:1"})
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run = %v, want an error with %q", err, tc.want)
		}
	}
}

// TestLocal_UserExcludedDuringItsDsync: a user put in the excluded-users
// file (and SIGHUP) while its dsync runs gets no dsync after that: not
// the rerun for a change that came meanwhile, nor the retries of an
// attempt that failed. `dovewarden status` then shows it excluded, and
// neither pending nor failed (it would say "the sweep retries it").
// Taken out of the file again, it is replicated at its next change.
func TestLocal_UserExcludedDuringItsDsync(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply doveadmtest.Reply
	}{
		{"succeeds", doveadmtest.Reply{}},
		{"fails", doveadmtest.Reply{ExitCode: 75}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			file := filepath.Join(t.TempDir(), "excluded")
			write := func(s string) {
				t.Helper()
				if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			write("# none yet\n")
			tr := doveadmtest.NewTracker(t)
			fake := doveadmtest.NewServer(t, "mail-a.test", tr)
			// The first dsync of u1 is held until released.
			started, release := make(chan struct{}, 1), make(chan struct{})
			var first sync.Once
			fake.OnStart = func(c doveadmtest.Call) {
				first.Do(func() {
					started <- struct{}{}
					<-release
				})
			}
			var freed sync.Once
			free := func() { freed.Do(func() { close(release) }) }
			t.Cleanup(free)
			var answered atomic.Bool // tc.reply until set, then success
			fake.Respond = func(doveadmtest.Call) doveadmtest.Reply {
				if answered.Load() {
					return doveadmtest.Reply{}
				}
				return tc.reply
			}
			base, stop, stderr := startLocalWith(t, fake, "--redis-url", srv.URL(), "--excluded-users", file,
				"--sweep-every", "0", "--retry-backoff", "50ms", "--retry-backoff-max", "100ms")
			loads := 1
			reload := func(s string) {
				t.Helper()
				write(s)
				if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				loads++
				want := `dovewarden_excluded_users_loads_total{outcome="success"} ` + strconv.Itoa(loads) + "\n"
				if m, ok := awaitMetric(t, base, want); !ok {
					t.Fatalf("no %q in\n%s\n%s", want, m, stderr)
				}
			}

			postDovecotEvent(t, base, deliveryEvent)
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatalf("no dsync of u1\n%s", stderr)
			}
			reload("u1\n")
			excludedAt := time.Now()
			// A change while it runs: merged into it, or marked for a rerun.
			postDovecotEvent(t, base, strings.Replace(deliveryEvent, "10:00:00", "10:00:05", 1))
			time.Sleep(200 * time.Millisecond)
			free()

			rdb := srv.Client(t)
			deadline := time.Now().Add(10 * time.Second)
			for rdb.Exists(context.Background(), state.LockKey("u1")).Val() == 1 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond) // room for a retry or rerun that would follow
			var after int
			for _, c := range tr.CallsOf("u1") {
				if c.Start.After(excludedAt) {
					after++
				}
			}
			if after != 0 {
				t.Errorf("%d dsyncs of u1 started after it was excluded, want none\n%s", after, stderr)
			}

			env, out, errb := testEnv(nil, "")
			if err := run(context.Background(), env, []string{"status", "--redis-url", srv.URL(), "--json", "u1"}); err != nil {
				t.Fatalf("status: %v\n%s", err, errb)
			}
			var recs []state.UserStatus
			if err := json.Unmarshal([]byte(out.String()), &recs); err != nil || len(recs) != 1 {
				t.Fatalf("status: %v\n%s", err, out)
			}
			if s := recs[0]; !s.Excluded || s.Failed || !s.PendingSince.IsZero() || s.InProgress {
				t.Errorf("status of the excluded user: %+v, want excluded, neither failed, pending nor in progress", s)
			}

			// Taken back: its next change runs a dsync.
			reload("# none again\n")
			answered.Store(true)
			before := len(tr.CallsOf("u1"))
			postDovecotEvent(t, base, strings.Replace(deliveryEvent, "10:00:00", "10:00:09", 1))
			for len(tr.CallsOf("u1")) == before && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if len(tr.CallsOf("u1")) == before {
				t.Errorf("u1, taken back, was not replicated at its next change\n%s", stderr)
			}
			if err := stop(); err != nil {
				t.Fatalf("local returned %v", err)
			}
		})
	}
}
