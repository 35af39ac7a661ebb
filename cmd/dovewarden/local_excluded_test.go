package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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
