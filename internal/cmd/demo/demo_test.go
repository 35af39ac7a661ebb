package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// TestDemo runs the README's main command as `make demo` does: the built
// demo binary, as its own foreground job (a process group of its own),
// against real Dovecot 2.3. Once the demonstration has run it presses
// Ctrl-C the way a terminal does, SIGINT to the whole group, and checks
// that the demo ends with status 0 and that every process it started is
// gone and their ports are closed.
func TestDemo(t *testing.T) {
	r := startDemo(t, "Running until Ctrl-C")
	out := r.out.String()
	for _, want := range []string{"alice's INBOX on mail-b.demo has messages=1", `is \Flagged`,
		"bob's INBOX on mail-a.demo has messages=1", "/metrics"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	m := regexp.MustCompile(`Metrics:  http://(127\.0\.0\.1:\d+)/metrics`).FindStringSubmatch(out)
	imap := regexp.MustCompile(`IMAP on mail-a\.demo: (\S+), on mail-b\.demo: (\S+) `).FindStringSubmatch(out)
	if m == nil || imap == nil {
		t.Fatalf("demo output names no dovewarden or IMAP address:\n%s", out)
	}
	// The status URLs it prints answer with JSON.
	for _, u := range regexp.MustCompile(`http://127\.0\.0\.1:\d+/status\S*`).FindAllString(out, -1) {
		u = strings.TrimSuffix(u, ",")
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		var v map[string]any
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil || len(v) == 0 {
			t.Errorf("GET %s printed by the demo: HTTP %d, %v", u, resp.StatusCode, err)
		}
	}
	if !strings.Contains(out, m[1]+"/status (all)") {
		t.Errorf("demo output names no overall status URL:\n%s", out)
	}
	// So does the status command it prints (docs/local.md's, with the
	// demo's port rather than 8080).
	sc := regexp.MustCompile(`(\S+) status --url (http://\S+) \[alice bob\]`).FindStringSubmatch(out)
	if sc == nil || sc[2] != "http://"+m[1] {
		t.Fatalf("demo output names no dovewarden status command for %s:\n%s", m[1], out)
	}
	if st, err := exec.Command(sc[1], "status", "--url", sc[2], "alice").CombinedOutput(); err != nil ||
		!strings.Contains(string(st), "last success") {
		t.Errorf("the printed %s status --url %s alice: %v\n%s", sc[1], sc[2], err, st)
	}
	lmtp := regexp.MustCompile(`LMTP on mail-a\.demo: (\S+), on mail-b\.demo: (\S+) `).FindStringSubmatch(out)
	if lmtp == nil {
		t.Fatalf("demo output names no LMTP address:\n%s", out)
	}
	addrs := []string{m[1], imap[1], imap[2], lmtp[1], lmtp[2]}
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			t.Fatalf("%s printed by the demo does not accept connections: %v", a, err)
		}
		c.Close()
	}
	// "Try it": mail delivered to mail-b.demo with what the demo printed
	// reaches mail-a.demo.
	if err := dovecottest.DeliverLMTP(lmtp[2], "sender@example.test", "bob@example.test", "Subject: tried\r\n\r\nBy hand.\r\n"); err != nil {
		t.Fatalf("LMTP delivery to mail-b.demo's printed address: %v", err)
	}
	var status string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if status = bobsMessages(t, imap[1]); status == "MESSAGES 2" {
			break
		}
	}
	if status != "MESSAGES 2" {
		t.Errorf("bob's INBOX on mail-a.demo after a delivery on mail-b.demo: %q, want MESSAGES 2", status)
	}

	code := r.interrupt()
	if code != 0 {
		t.Errorf("demo exit status after Ctrl-C = %d, want 0\nstdout:\n%s\nstderr:\n%s", code, r.out.String(), r.errs.String())
	}
	if !strings.HasSuffix(r.out.String(), "\nStopping.\n") {
		t.Errorf("demo output does not end with Stopping.:\n%s", r.out.String())
	}
	if r.errs.String() != "" {
		t.Errorf("demo wrote to stderr:\n%s", r.errs.String())
	}
	r.checkStopped()
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after the demo stopped", a)
		}
	}
}

// bobsMessages reads bob's INBOX message count over IMAP at addr, with
// the password the demo prints.
func bobsMessages(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := dovecottest.LoginIMAP(ctx, addr, "bob", "secret")
	if err != nil {
		t.Fatalf("IMAP login as bob at the printed %s: %v", addr, err)
	}
	defer s.Close()
	untagged, tagged, err := s.Cmd(ctx, "STATUS INBOX (MESSAGES)")
	if err != nil || !dovecottest.IsOK(tagged) || len(untagged) == 0 {
		t.Fatalf("STATUS: %v %s", err, tagged)
	}
	l := untagged[0]
	return strings.TrimSuffix(l[strings.LastIndex(l, "(")+1:], ")")
}

// TestDemo_InterruptedEarly presses Ctrl-C while the demonstration runs:
// the demo stops everything it started, says so, and exits as a program
// that SIGINT ended (130), without reporting a failure.
func TestDemo_InterruptedEarly(t *testing.T) {
	r := startDemo(t, "1. New mail")
	code := r.interrupt()
	if code != 130 {
		t.Errorf("demo exit status after an early Ctrl-C = %d, want 130\nstdout:\n%s\nstderr:\n%s", code, r.out.String(), r.errs.String())
	}
	if !strings.Contains(r.out.String(), "Interrupted before the demonstration finished. Stopping.") {
		t.Errorf("demo output does not say it was interrupted:\n%s", r.out.String())
	}
	if r.errs.String() != "" {
		t.Errorf("an interrupted demo reported a failure on stderr:\n%s", r.errs.String())
	}
	r.checkStopped()
}

// TestDemo_Hangup closes the demo's terminal, as a dropped SSH session
// does: SIGHUP to the foreground process group. The demo stops everything
// it started, as on Ctrl-C.
func TestDemo_Hangup(t *testing.T) {
	r := startDemo(t, "Running until Ctrl-C")
	if code := r.signal(syscall.SIGHUP); code != 0 {
		t.Errorf("demo exit status after SIGHUP = %d, want 0\nstdout:\n%s\nstderr:\n%s", code, r.out.String(), r.errs.String())
	}
	r.checkStopped()
}

// TestDemo_DovewardenDies kills the demo's dovewarden local (SIGKILL)
// while the demo runs until Ctrl-C: the demo says that it exited, with its
// log, exits with status 1 rather than waiting for a Ctrl-C, and leaves
// nothing running.
func TestDemo_DovewardenDies(t *testing.T) {
	r := startDemo(t, "Running until Ctrl-C")
	pid := r.child("dovewarden")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := r.wait("dovewarden local was killed"); code != 1 {
		t.Errorf("demo exit status after dovewarden local died = %d, want 1\nstdout:\n%s\nstderr:\n%s", code, r.out.String(), r.errs.String())
	}
	for _, want := range []string{"local exited while the demo was running (signal: killed)", "dovewarden's log ("} {
		if !strings.Contains(r.errs.String(), want) {
			t.Errorf("demo's error does not say %q:\n%s", want, r.errs.String())
		}
	}
	r.checkStopped()
}

// TestDemo_DovecotDies kills the master process of one of the demo's
// Dovecot instances while the demo runs until Ctrl-C: the demo names the
// instance that exited, shows its log and exits with status 1, and
// leaves nothing running.
func TestDemo_DovecotDies(t *testing.T) {
	r := startDemo(t, "Running until Ctrl-C")
	pid := r.child("dovecot")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := r.wait("a Dovecot master was killed"); code != 1 {
		t.Errorf("demo exit status after a Dovecot master died = %d, want 1\nstdout:\n%s\nstderr:\n%s", code, r.out.String(), r.errs.String())
	}
	said := regexp.MustCompile(`Dovecot 2\.3 "(mail-[ab]\.demo)" \(master process ` + strconv.Itoa(pid) + `\) exited while the demo was running`).FindStringSubmatch(r.errs.String())
	if said == nil {
		t.Fatalf("demo's error does not name the Dovecot instance of PID %d as exited:\n%s", pid, r.errs.String())
	}
	if !strings.Contains(r.errs.String(), said[1]+"'s log:\n") {
		t.Errorf("demo's error does not show %s's log:\n%s", said[1], r.errs.String())
	}
	r.checkStopped()
}

// TestDemo_InterruptedAtStart presses Ctrl-C while the first Dovecot
// instance starts: nothing is left running, and what stays on disk is
// named in the output.
func TestDemo_InterruptedAtStart(t *testing.T) {
	r := startDemo(t, `Starting Dovecot 2.3 "mail-a.demo"`)
	r.early = true
	if code := r.interrupt(); code != 130 {
		t.Errorf("demo exit status after Ctrl-C at start = %d, want 130\nstdout:\n%s\nstderr:\n%s", code, r.out.String(), r.errs.String())
	}
	r.checkStopped()
}

// TestDemo_DovewardenExitsAtStart: when dovewarden local exits at once
// (here a stand-in that fails as a taken port makes it fail), the demo
// says so right away with its log, rather than waiting for /readyz, and
// leaves nothing running.
func TestDemo_DovewardenExitsAtStart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo starts Dovecot instances, which needs root (CI runs as root)")
	}
	tmp := tempDir(t)
	demo := buildDemo(t, tmp, false)
	bin := filepath.Join(tmp, "dovewarden")
	script := "#!/bin/sh\necho 'dovewarden: listen: bind: address already in use' >&2\nexit 1\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(demo, "-bin", bin)
	cmd.Dir = "../../.."
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stdout, stderr safebuf.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("demo with a dovewarden that exits: err %v, want exit status 1\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{"local exited before it was ready", "address already in use"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("demo's error does not say %q:\n%s", want, stderr.String())
		}
	}
	for _, pid := range pids() {
		if cl, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); strings.Contains(string(cl), tmp) {
			t.Errorf("still running after the demo exited: %d %s", pid, strings.ReplaceAll(string(cl), "\x00", " "))
		}
	}
}

// TestDemo_NotRoot: run by another user, the demo installs nothing and
// says what it needs.
func TestDemo_NotRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching to another user needs root (CI runs as root)")
	}
	tmp := tempDir(t)
	demo := buildDemo(t, tmp, false)
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		cmd := exec.Command(demo, "-dovecot", version)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("demo -dovecot %s as nobody: err %v, want exit status 1\n%s", version, err, out)
		}
		// What it says is missing is what is missing on this machine.
		want := []string{"run the demo as root"}
		if m := dovecottest.Missing(version); len(m) == 0 {
			want = append(want, "Dovecot "+version+" is ready here; only root is missing.")
		} else {
			want = append(want, m...)
		}
		for _, w := range want {
			if !strings.Contains(string(out), w) {
				t.Errorf("demo -dovecot %s as nobody does not say %q:\n%s", version, w, out)
			}
		}
		if version == dovecottest.V24 && strings.Contains(string(out), "dovecot-core") {
			t.Errorf("demo -dovecot 2.4 as nobody names Debian's Dovecot 2.3 packages:\n%s", out)
		}
	}
}

// TestNotRoot: what a user other than root reads when something is
// missing, and when only root is.
func TestNotRoot(t *testing.T) {
	got := notRoot("2.3", []string{"Dovecot 2.3: apt-get install dovecot-core dovecot-imapd dovecot-lmtpd dovecot-pop3d"})
	for _, want := range []string{"run the demo as root", "Missing here for Dovecot 2.3",
		"  - Dovecot 2.3: apt-get install dovecot-core dovecot-imapd dovecot-lmtpd dovecot-pop3d"} {
		if !strings.Contains(got, want) {
			t.Errorf("notRoot with Dovecot missing lacks %q:\n%s", want, got)
		}
	}
	if !strings.Contains(got, "sudo ./bin/demo -bin bin/dovewarden\n") || strings.Contains(got, "sudo make") {
		t.Errorf("notRoot does not name the built demo to run with sudo:\n%s", got)
	}
	got = notRoot("2.4", nil)
	if !strings.Contains(got, "Dovecot 2.4 is ready here; only root is missing.") {
		t.Errorf("notRoot with nothing missing:\n%s", got)
	}
	if !strings.Contains(got, "sudo ./bin/demo -bin bin/dovewarden -dovecot 2.4\n") {
		t.Errorf("notRoot for Dovecot 2.4 does not name its flag:\n%s", got)
	}
}

// TestOtherVersion: when Dovecot 2.3 cannot be had here (Debian 13 ships
// 2.4), the demo's error says how to run it with Dovecot 2.4; other
// errors pass unchanged.
func TestOtherVersion(t *testing.T) {
	for _, ve := range []*dovecottest.VersionError{{Want: "2.3", Have: "2.4.1"}, {Want: "2.3", Have: "2.4.1", Installed: true}} {
		got := otherVersion(ve).Error()
		for _, want := range []string{"2.4.1", "Debian 12", `DEMO_FLAGS="-dovecot 2.4" make demo`} {
			if !strings.Contains(got, want) {
				t.Errorf("otherVersion(%+v) lacks %q:\n%s", *ve, want, got)
			}
		}
	}
	other := errors.New("dovecottest: apt-get update: exit status 100")
	if got := otherVersion(other); got != other {
		t.Errorf("otherVersion changed another error: %v", got)
	}
}

// TestCheckTempDir: a TMPDIR that other users cannot traverse (mode
// 0700, as libpam-tmpdir makes under sudo) is replaced by /tmp, with a
// word about it; one they can is kept, silently.
func TestCheckTempDir(t *testing.T) {
	if c, err := closedFolder("/tmp"); err != nil || c != "" {
		t.Skipf("/tmp itself is closed here (%q, %v)", c, err)
	}
	base := tempDir(t) // 0755
	closed := filepath.Join(base, "user-0")
	if err := os.Mkdir(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(closed, "tmp")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if c, err := closedFolder(inner); err != nil || c != closed {
		t.Errorf("closedFolder(%s) = %q, %v, want %s", inner, c, err, closed)
	}
	if c, err := closedFolder(base); err != nil || c != "" {
		t.Errorf("closedFolder(%s) = %q, %v, want none", base, c, err)
	}

	var out strings.Builder
	d := &demo{out: &out}
	t.Setenv("TMPDIR", base)
	if err := d.checkTempDir(); err != nil || os.TempDir() != base || out.Len() != 0 {
		t.Errorf("checkTempDir with an open TMPDIR: %v, TMPDIR now %s, said %q", err, os.TempDir(), out.String())
	}
	t.Setenv("TMPDIR", inner)
	if err := d.checkTempDir(); err != nil || os.TempDir() != "/tmp" {
		t.Errorf("checkTempDir with a closed TMPDIR: %v, TMPDIR now %s", err, os.TempDir())
	}
	if !strings.Contains(out.String(), closed+" is not open to other users") || !strings.Contains(out.String(), "using /tmp instead") {
		t.Errorf("checkTempDir with a closed TMPDIR said %q", out.String())
	}
}

// TestLogExcerpt: the demo's failure report shows a Dovecot log's last
// lines and, before them, its earlier error lines.
func TestLogExcerpt(t *testing.T) {
	var lines []string
	for i := range 50 {
		lines = append(lines, "info line "+strconv.Itoa(i))
		if i == 3 {
			lines = append(lines, "Nov 30 04:33:34 auth: Error: passwd-file /tmp/x/users: open(/tmp/x/users) failed: Permission denied")
		}
	}
	got := logExcerpt(strings.Join(lines, "\n")+"\n", 20)
	if !strings.Contains(got, "auth: Error: passwd-file") || !strings.HasSuffix(got, "info line 49") ||
		strings.Contains(got, "info line 29") || !strings.Contains(got, "info line 30") {
		t.Errorf("logExcerpt:\n%s", got)
	}
	if got := logExcerpt("a\nb\n", 20); got != "a\nb" {
		t.Errorf("logExcerpt of a short log = %q", got)
	}
}

// demoRun is a demo started by startDemo.
type demoRun struct {
	t         *testing.T
	cmd       *exec.Cmd
	out, errs *safebuf.Buffer
	done      chan struct{}
	tmp       string
	// started maps the PIDs of the demo's descendants, taken just before
	// Ctrl-C, to what they were.
	started map[int]proc
	// early: Ctrl-C came before every process was started.
	early bool
}

// proc is a process as /proc showed it: its command name, and its start
// time so that a reused PID is not mistaken for it.
type proc struct{ comm, start string }

// startDemo builds dovewarden and the demo, starts the demo from the
// repository root in a process group of its own, and returns once its
// output has a line containing until.
func startDemo(t *testing.T, until string) *demoRun {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the demo starts Dovecot instances, which needs root (CI runs as root)")
	}
	// The demo's and the Dovecot instances' folders go under TMPDIR: one
	// the vmail user can traverse, which t.TempDir() is not.
	tmp := tempDir(t)
	demo, bin := buildDemo(t, tmp, true), filepath.Join(tmp, "dovewarden")
	r := &demoRun{t: t, out: &safebuf.Buffer{}, errs: &safebuf.Buffer{}, done: make(chan struct{}), tmp: tmp}
	r.cmd = exec.Command(demo, "-bin", bin)
	r.cmd.Dir = "../../.." // the demo reads config/dovecot from the repository root
	r.cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	r.cmd.Stderr = r.errs
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reached := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		seen := false
		for sc.Scan() {
			r.out.Write(append(sc.Bytes(), '\n'))
			if !seen && strings.Contains(sc.Text(), until) {
				seen = true
				close(reached)
			}
		}
		_ = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		// A failed test leaves nothing running either.
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.done
		if t.Failed() {
			t.Logf("demo stdout:\n%s\nstderr:\n%s", r.out.String(), r.errs.String())
		}
	})
	select {
	case <-reached:
	case <-r.done:
		t.Fatalf("demo exited before %q: %v", until, r.cmd.ProcessState)
	case <-time.After(3 * time.Minute):
		t.Fatalf("no %q from the demo within 3 minutes", until)
	}
	r.started = descendants(r.cmd.Process.Pid)
	return r
}

// interrupt sends SIGINT to the demo's process group, as Ctrl-C in a
// terminal does, and returns the demo's exit status.
func (r *demoRun) interrupt() int {
	r.t.Helper()
	return r.signal(syscall.SIGINT)
}

// signal sends sig to the demo's process group and returns the demo's
// exit status.
func (r *demoRun) signal(sig syscall.Signal) int {
	r.t.Helper()
	if err := syscall.Kill(-r.cmd.Process.Pid, sig); err != nil {
		r.t.Fatal(err)
	}
	return r.wait(sig.String())
}

// wait returns the demo's exit status once it has exited, failing the
// test when it has not within a minute of what happened.
func (r *demoRun) wait(what string) int {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(time.Minute):
		r.t.Fatalf("the demo did not stop within a minute of this: %s", what)
	}
	return r.cmd.ProcessState.ExitCode()
}

// child returns the PID of a child process of the demo named comm, as
// seen once it was running (one of two for dovecot), failing the test
// when it has none.
func (r *demoRun) child(comm string) int {
	r.t.Helper()
	for pid, p := range r.started {
		if f := stat(pid); p.comm == comm && len(f) > 1 && f[1] == strconv.Itoa(r.cmd.Process.Pid) && startTime(pid) == p.start {
			return pid
		}
	}
	r.t.Fatalf("the demo has no child process %s: %v", comm, r.started)
	return 0
}

// checkStopped checks that the processes the demo started (dovewarden
// local and both Dovecot instances) are gone, with every descendant seen
// before Ctrl-C, and that no process refers to the demo's folders.
func (r *demoRun) checkStopped() {
	r.t.Helper()
	comms := map[string]int{}
	for _, p := range r.started {
		comms[p.comm]++
	}
	if !r.early && (comms["dovewarden"] < 1 || comms["dovecot"] < 2) {
		r.t.Fatalf("before Ctrl-C the demo's processes were %v, want dovewarden and two dovecot masters among them", comms)
	}
	// Dovecot's own children leave once their master has gone; give them
	// a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for pid, p := range r.started {
			if start := startTime(pid); start != "" && start == p.start {
				left = append(left, strconv.Itoa(pid)+" "+p.comm)
			}
		}
		for _, pid := range pids() {
			if cl, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); strings.Contains(string(cl), r.tmp) {
				left = append(left, strconv.Itoa(pid)+" "+strings.ReplaceAll(string(cl), "\x00", " "))
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("processes the demo started are still running 10 s after it exited: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// What stays is the demo's log, for a look after the run; the Dovecot
	// instances' folders go with them.
	var files []string
	_ = filepath.WalkDir(r.tmp, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(path, r.tmp+"/"))
		}
		return nil
	})
	for _, f := range files {
		if f != "demo" && f != "dovewarden" && !regexp.MustCompile(`^dovewarden-demo-\d+/dovewarden\.log$`).MatchString(f) {
			r.t.Errorf("the demo left %s behind (%d files in all)", f, len(files))
			break
		}
		// The log that stays is one the demo named.
		if strings.HasSuffix(f, "/dovewarden.log") && !strings.Contains(r.out.String(), filepath.Join(r.tmp, f)) {
			r.t.Errorf("the demo left %s behind without saying where:\n%s", f, r.out.String())
		}
	}
	// No empty folder either.
	dirs, _ := filepath.Glob(filepath.Join(r.tmp, "dovewarden-demo-*"))
	for _, d := range dirs {
		if ents, err := os.ReadDir(d); err == nil && len(ents) == 0 {
			r.t.Errorf("the demo left the empty folder %s behind", d)
		}
	}
}

func tempDir(t *testing.T) string {
	t.Helper()
	tmp, err := os.MkdirTemp("", "demo-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	return tmp
}

// buildDemo builds the demo (and, with dovewarden, the dovewarden binary)
// into dir and returns the demo's path.
func buildDemo(t *testing.T, dir string, dovewarden bool) string {
	t.Helper()
	pkgs := map[string]string{"demo": "github.com/dovewarden/dovewarden-knative/internal/cmd/demo"}
	if dovewarden {
		pkgs["dovewarden"] = "github.com/dovewarden/dovewarden-knative/cmd/dovewarden"
	}
	for name, pkg := range pkgs {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return filepath.Join(dir, "demo")
}

// pids lists the running processes.
func pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// stat returns the fields of /proc/PID/stat after the command name, or
// nil when the process is gone.
func stat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// startTime is the process's start time in clock ticks since boot, or ""
// when it is gone.
func startTime(pid int) string {
	if f := stat(pid); len(f) > 19 {
		return f[19]
	}
	return ""
}

func comm(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

// descendants lists every descendant of root.
func descendants(root int) map[int]proc {
	children := map[int][]int{}
	for _, pid := range pids() {
		if f := stat(pid); len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	out := map[int]proc{}
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			queue = append(queue, c)
			// One that ended since the listing has no start time to
			// tell it from a later process of the same pid.
			if start := startTime(c); start != "" {
				out[c] = proc{comm: comm(c), start: start}
			}
		}
	}
	return out
}

// TestAwaitSync_StopsOnCtrlC: Ctrl-C while dovewarden's status does not
// answer (a wedged process) ends the wait, rather than leaving the demo
// waiting for an answer that never comes, with every later Ctrl-C
// ignored and nothing stopped.
func TestAwaitSync_StopsOnCtrlC(t *testing.T) {
	asked, release := make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case asked <- struct{}{}:
		default:
		}
		// No answer until the demo gives up (or the test ends).
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	d := &demo{out: io.Discard, base: srv.URL}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.awaitSync(ctx, "alice", time.Time{}, time.Time{}) }()
	<-asked
	cancel() // Ctrl-C
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("awaitSync after Ctrl-C: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("awaitSync still waits for dovewarden's answer 30 s after Ctrl-C")
	}
}
