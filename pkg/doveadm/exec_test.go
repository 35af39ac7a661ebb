package doveadm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as a fake doveadm: with FAKE_DOVEADM_DIR set it
// records its argv there and exits with FAKE_DOVEADM_EXIT.
func TestMain(m *testing.M) {
	if dir := os.Getenv("FAKE_DOVEADM_DIR"); dir != "" {
		b, _ := json.Marshal(os.Args[1:])
		_ = os.WriteFile(filepath.Join(dir, "argv.json"), b, 0o600)
		b, _ = json.Marshal(os.Environ())
		_ = os.WriteFile(filepath.Join(dir, "environ.json"), b, 0o600)
		if d, _ := time.ParseDuration(os.Getenv("FAKE_DOVEADM_SLEEP")); d > 0 {
			time.Sleep(d)
		}
		code, _ := strconv.Atoi(os.Getenv("FAKE_DOVEADM_EXIT"))
		if n, _ := strconv.Atoi(os.Getenv("FAKE_DOVEADM_STATE_BYTES")); code == 0 && n > 0 {
			fmt.Println(strings.Repeat("A", n))
		} else if code == 0 {
			fmt.Println("AQAAAnewstate")
		} else if msg := os.Getenv("FAKE_DOVEADM_STDERR"); msg != "" {
			fmt.Fprintln(os.Stderr, msg)
		} else {
			fmt.Fprintln(os.Stderr, "Error: sync failed with the fake")
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func fakeDoveadm(t *testing.T, exit int) (bin, dir string) {
	dir = t.TempDir()
	t.Setenv("FAKE_DOVEADM_DIR", dir)
	t.Setenv("FAKE_DOVEADM_EXIT", strconv.Itoa(exit))
	return os.Args[0], dir
}

func readArgv(t *testing.T, dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "argv.json"))
	if err != nil {
		t.Fatal(err)
	}
	var argv []string
	if err := json.Unmarshal(b, &argv); err != nil {
		t.Fatal(err)
	}
	return argv
}

func TestExec_ArgvAndState(t *testing.T) {
	bin, dir := fakeDoveadm(t, 0)
	ep := Endpoint{Config: "/etc/dovecot/a.conf", Destination: "tcp:replica:12345"}
	// Shell metacharacters arrive as one argument: no shell is involved.
	user := "a b; touch pwned $(id)"

	res, err := NewExec(bin, 10*time.Second).Sync(context.Background(), ep, SyncRequest{User: user, Destination: ep.Destination, State: "old", Full: true})

	if err != nil || res.State != "AQAAAnewstate" {
		t.Fatalf("Sync = %+v, %v", res, err)
	}
	want := []string{"-c", "/etc/dovecot/a.conf", "sync", "-u", user, "-N", "-s", "old", "-T", "10", "-f", "tcp:replica:12345"}
	if got := readArgv(t, dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("argv %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Error("a shell ran the username")
	}
}

func TestExec_FirstSyncPassesEmptyState(t *testing.T) {
	bin, dir := fakeDoveadm(t, 0)
	if _, err := NewExec(bin, 10*time.Second).Sync(context.Background(), Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"sync", "-u", "u1", "-N", "-s", "", "-T", "10", "tcp:r:1"}
	if got := readArgv(t, dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("argv %q, want %q", got, want)
	}
}

// TestExec_AsksForDsyncsOwnLock: a lock timeout is passed as -l SECS, as
// doveadm-http passes lockTimeout: without it dsync takes no lock of its
// own, and nothing guards a user whose Redis lock was lost.
func TestExec_AsksForDsyncsOwnLock(t *testing.T) {
	bin, dir := fakeDoveadm(t, 0)
	req := SyncRequest{User: "u1", Destination: "tcp:r:1", State: "old", LockTimeout: 30 * time.Second}
	if _, err := NewExec(bin, 10*time.Second).Sync(context.Background(), Endpoint{}, req); err != nil {
		t.Fatal(err)
	}
	want := []string{"sync", "-u", "u1", "-N", "-s", "old", "-l", "30", "-T", "10", "tcp:r:1"}
	if got := readArgv(t, dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("argv %q, want %q", got, want)
	}
}

// TestArgs_LockTimeoutInWholeSecondsRoundedUp: doveadm's -l takes whole
// seconds; a timeout under one still asks for the lock.
func TestArgs_LockTimeoutInWholeSecondsRoundedUp(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{{0, ""}, {400 * time.Millisecond, "1"}, {time.Second, "1"}, {1500 * time.Millisecond, "2"}, {30 * time.Second, "30"}} {
		args := Args(Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1", LockTimeout: tc.d})
		got := ""
		for i, a := range args {
			if a == "-l" && i+1 < len(args) {
				got = args[i+1]
			}
		}
		if got != tc.want {
			t.Errorf("lock timeout %v: -l %q in %q, want %q", tc.d, got, args, tc.want)
		}
	}
}

// TestExec_StallTimeoutIsWhatIsLeftOfTheBound: -T is the call's bound or
// what is left of the caller's deadline, whichever comes first, in whole
// seconds rounded up, at most Dovecot's own 600.
func TestExec_StallTimeoutIsWhatIsLeftOfTheBound(t *testing.T) {
	for _, tc := range []struct {
		bound, deadline time.Duration
		want            string
	}{{90 * time.Second, 0, "90"}, {90 * time.Second, 30 * time.Second, "30"}, {20 * time.Minute, 0, "600"}, {0, 0, ""}} {
		bin, dir := fakeDoveadm(t, 0)
		ctx := context.Background()
		if tc.deadline > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, tc.deadline)
			defer cancel()
		}
		if _, err := NewExec(bin, tc.bound).Sync(ctx, Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1"}); err != nil {
			t.Fatal(err)
		}
		args, got := readArgv(t, dir), ""
		for i, a := range args {
			if a == "-T" && i+1 < len(args) {
				got = args[i+1]
			}
		}
		if got != tc.want {
			t.Errorf("bound %v, deadline %v: -T %q in %q, want %q", tc.bound, tc.deadline, got, args, tc.want)
		}
	}
}

func TestExec_ExitCodes(t *testing.T) {
	for _, code := range []int{2, 65, 67, 75, 78} {
		bin, _ := fakeDoveadm(t, code)
		_, err := NewExec(bin, 10*time.Second).Sync(context.Background(), Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1"})
		if ExitCodeOf(err) != code || Decide(err) != Lookup(code) {
			t.Errorf("exit %d: err %v", code, err)
		}
		if !strings.Contains(err.Error(), "sync failed with the fake") {
			t.Errorf("exit %d: stderr not in the error: %v", code, err)
		}
	}
}

// TestExec_ConfigUnreadableWhateverThePassword: doveadm's "could not
// read its configuration" (exit code 75) is class config_error, for a
// sync and a listing, also when the endpoint's password is a word of that
// message: the message is masked for the error, not for telling what
// doveadm said. Before, a password such as "config" turned it into a
// tempfail, retried as a replica that is down.
func TestExec_ConfigUnreadableWhateverThePassword(t *testing.T) {
	for _, msg := range []string{
		"doveconf: Fatal: Error reading configuration: Invalid settings: /etc/dovecot/a.conf",
		"Fatal: Failed to read configuration: /etc/dovecot/a.conf",
	} {
		for _, pw := range []string{"", "config", "read", "Fatal"} {
			bin, _ := fakeDoveadm(t, 75)
			t.Setenv("FAKE_DOVEADM_STDERR", msg)
			ep := Endpoint{Password: pw, Config: "/etc/dovecot/a.conf", Destination: "tcp:r:1"}
			x := NewExec(bin, 10*time.Second)
			_, err := x.Sync(context.Background(), ep, SyncRequest{User: "u1", Destination: "tcp:r:1"})
			if r := Decide(err); r.Class != "config_error" {
				t.Errorf("sync, password %q, %q: %v decided %s, want config_error", pw, msg, err, r.Class)
			}
			var de *Error
			if pw != "" && errors.As(err, &de) && strings.Contains(de.Detail, pw) {
				t.Errorf("sync, password %q: doveadm's message is shown unmasked: %v", pw, err)
			}
			err = x.ListUsers(context.Background(), ep, func(string) error { return nil })
			if !errors.As(err, &de) || de.Kind != KindConfig {
				t.Errorf("listing, password %q, %q: %v, want kind config", pw, msg, err)
			}
		}
	}
}

func TestExec_TimeoutAndMissingBinaryAreTransportErrors(t *testing.T) {
	bin, _ := fakeDoveadm(t, 0)
	t.Setenv("FAKE_DOVEADM_SLEEP", "5s")
	_, err := NewExec(bin, 100*time.Millisecond).Sync(context.Background(), Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1"})
	if r := Decide(err); r.Class != "transport" {
		t.Errorf("timeout: %v decided %+v", err, r)
	}
	_, err = NewExec("/nonexistent/doveadm", time.Second).Sync(context.Background(), Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1"})
	if r := Decide(err); r.Class != "transport" {
		t.Errorf("missing binary: %v decided %+v", err, r)
	}
}

func TestExec_RefusesHostileUser(t *testing.T) {
	bin, dir := fakeDoveadm(t, 0)
	_, err := NewExec(bin, time.Second).Sync(context.Background(), Endpoint{}, SyncRequest{User: "-A", Destination: "tcp:r:1"})
	if err == nil || !strings.Contains(err.Error(), "starts with '-'") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "argv.json")); err == nil {
		t.Error("doveadm ran for a hostile username")
	}
}

// TestExec_KeepsSettingsFromDoveadm: dovewarden's own settings (the
// DOVEWARDEN_* variables: a Redis URL with its password, ingest's
// credentials, the doveadm password; and the sink Knative gives it) are
// not doveadm's, nor of what
// doveadm starts in turn (dsync_remote_cmd's ssh, doveconf): the child's
// environment is the process's without them, and nothing else is taken
// out.
func TestExec_KeepsSettingsFromDoveadm(t *testing.T) {
	// Marked so that no path of the checkout (the test's working
	// directory is in PWD) can spell them.
	t.Setenv("DOVEWARDEN_REDIS_URL", "redis://:Zq9redis-secret@127.0.0.1:6379/0")
	t.Setenv("DOVEWARDEN_AUTH_PASSWORD", "Zq9ingest-secret")
	t.Setenv("DOVEWARDEN_DOVEADM_PASSWORD", "Zq9doveadm-secret")
	t.Setenv("K_SINK", "http://broker.test/Zq9sink")
	t.Setenv("K_CE_OVERRIDES", `{"extensions":{"zq9":"1"}}`)
	t.Setenv("K_CA_CERTS", "Zq9-----BEGIN CERTIFICATE-----")
	t.Setenv("DOVECOT_KEEPS_THIS", "1")
	t.Setenv("K_SERVICE", "sync")
	for _, list := range []bool{false, true} {
		bin, dir := fakeDoveadm(t, 0)
		x := NewExec(bin, 10*time.Second)
		ep := Endpoint{Destination: "tcp:replica:12345"}
		var err error
		if list {
			err = x.ListUsers(context.Background(), ep, func(string) error { return nil })
		} else {
			_, err = x.Sync(context.Background(), ep, SyncRequest{User: "u1", Destination: ep.Destination})
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "environ.json"))
		if err != nil {
			t.Fatal(err)
		}
		var env []string
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatal(err)
		}
		joined := strings.Join(env, "\n")
		if strings.Contains(joined, "DOVEWARDEN_") || strings.Contains(joined, "Zq9") || strings.Contains(joined, "zq9") {
			t.Errorf("list=%v: doveadm's environment has dovewarden's settings:\n%s", list, joined)
		}
		for _, want := range []string{"DOVECOT_KEEPS_THIS=1", "K_SERVICE=sync", "PATH=" + os.Getenv("PATH")} {
			if !strings.Contains(joined, want) {
				t.Errorf("list=%v: doveadm's environment lacks %s", list, want)
			}
		}
	}
}

// TestExec_StateTooLargeForAnArgumentRunsAFullSyncWithoutIt: Linux refuses
// an argument over 32 pages (E2BIG at exec): the dsync runs at once as a
// full one without the state, and says so.
func TestExec_StateTooLargeForAnArgumentRunsAFullSyncWithoutIt(t *testing.T) {
	bin, dir := fakeDoveadm(t, 0)
	big := strings.Repeat("A", 3<<20) // over 32 pages of up to 64 KiB
	res, err := NewExec(bin, 10*time.Second).Sync(context.Background(), Endpoint{},
		SyncRequest{User: "u1", Destination: "tcp:r:1", State: big, LockTimeout: 30 * time.Second})
	if err != nil || res.State != "AQAAAnewstate" || res.StateLeftOut != len(big) {
		t.Fatalf("Sync = %q, left out %d, %v: want the new state, %d bytes left out", res.State, res.StateLeftOut, err, len(big))
	}
	want := []string{"sync", "-u", "u1", "-N", "-s", "", "-l", "30", "-T", "10", "-f", "tcp:r:1"}
	if got := readArgv(t, dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("argv %q, want %q", got, want)
	}
}

// TestExec_AStateTooLargeToKeepIsDropped: a dsync that returns a state
// larger than any doveadm takes back succeeds without it, so that the next
// dsync is a full one; one at the bound is kept.
func TestExec_AStateTooLargeToKeepIsDropped(t *testing.T) {
	bin, _ := fakeDoveadm(t, 0)
	for _, n := range []int{maxStateKept, 3 << 20} {
		t.Setenv("FAKE_DOVEADM_STATE_BYTES", strconv.Itoa(n))
		res, err := NewExec(bin, 10*time.Second).Sync(context.Background(), Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1"})
		switch {
		case err != nil:
			t.Errorf("a state of %d bytes: %v", n, err)
		case n <= maxStateKept && (len(res.State) != n || res.StateDropped != 0):
			t.Errorf("a state of %d bytes: kept %d, dropped %d; want it kept", n, len(res.State), res.StateDropped)
		case n > maxStateKept && (res.State != "" || res.StateDropped != n+1):
			t.Errorf("a state of %d bytes: kept %d, dropped %d; want it dropped, its size and line end counted", n, len(res.State), res.StateDropped)
		}
	}
}
