package main

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// runMainEnv, set in a child's environment, makes the test binary run the
// program itself instead of the tests: tests that must kill dovewarden
// the hard way (SIGKILL) run it as a child process so.
const runMainEnv = "DOVEWARDEN_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Args = append([]string{"dovewarden"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is dovewarden running as a process of its own.
type child struct {
	cmd    *exec.Cmd
	stderr *safebuf.Buffer
	done   chan struct{}
}

// startChild runs dovewarden with args and the environment env added, and
// waits until base/readyz answers 200. The child dies with the test.
func startChild(t *testing.T, base string, env []string, args ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), runMainEnv+"=1"), env...)
	c := &child{cmd: cmd, stderr: &safebuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.stderr, c.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() { c.kill(t) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		select {
		case <-c.done:
			t.Fatalf("%v exited before it was ready:\n%s", args, c.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v not ready after 15 s:\n%s", args, c.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the child with SIGKILL: no shutdown code of it runs.
func (c *child) kill(t *testing.T) {
	t.Helper()
	c.signal(t, syscall.SIGKILL, 10*time.Second)
}

// stop ends the child with SIGTERM, as systemd stops it (within the
// unit's TimeoutStopSec), and expects a clean exit.
func (c *child) stop(t *testing.T) {
	t.Helper()
	c.signal(t, syscall.SIGTERM, 30*time.Second)
	if !c.cmd.ProcessState.Success() {
		t.Fatalf("child exited with %v:\n%s", c.cmd.ProcessState, c.stderr)
	}
}

// signal sends sig and waits up to limit for the child to exit.
func (c *child) signal(t *testing.T, sig syscall.Signal, limit time.Duration) {
	t.Helper()
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(limit):
		t.Fatalf("child %d still running %s after %v:\n%s", c.cmd.Process.Pid, limit, sig, c.stderr)
	}
}

// freePort returns a loopback address no one listens on now, for a
// process that must come back on the same address.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestLocal_SecondInterruptExitsAtOnce: Ctrl-C starts a graceful stop,
// which waits up to --shutdown-timeout for the dsyncs in flight; a second
// Ctrl-C ends the process at once, as one expects at a terminal.
func TestLocal_SecondInterruptExitsAtOnce(t *testing.T) {
	fake, _, _, _, _ := slowableFake(t)
	started := make(chan struct{}, 1)
	fake.OnStart = func(doveadmtest.Call) {
		select {
		case started <- struct{}{}:
		default:
		}
	}
	fake.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{Delay: time.Minute} }
	addr := freePort(t)
	env := []string{"DOVEWARDEN_DOVEADM_PASSWORD=" + doveadmtest.Password, "DOVEWARDEN_SHUTDOWN_TIMEOUT=50s"}
	c := startChild(t, "http://"+addr, env, "local", "--listen", addr, "--doveadm-url", fake.APIURL(),
		"--destination", "tcp:127.0.0.1:1", "--workers", "1")
	select {
	case <-started: // the sweep at start runs a dsync that takes a minute
	case <-time.After(15 * time.Second):
		t.Fatalf("no dsync started:\n%s", c.stderr)
	}

	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
		t.Fatalf("the first interrupt ended the process without waiting for its dsync (%v), so the test tests nothing:\n%s", c.cmd.ProcessState, c.stderr)
	case <-time.After(2 * time.Second):
	}
	c.signal(t, syscall.SIGINT, 10*time.Second)
	ws, _ := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Fatalf("after the second interrupt the process ended with %v, want killed by SIGINT:\n%s", c.cmd.ProcessState, c.stderr)
	}
}

// TestServingRoles_SurviveSIGHUP: ingest, sync and broker have nothing to
// reload, yet a SIGHUP (systemctl reload, a closed terminal) must not end
// them: by default it would, at once, with no graceful stop, and a broker
// would lose the events it had accepted.
func TestServingRoles_SurviveSIGHUP(t *testing.T) {
	mr := miniredis.RunT(t)
	fake := doveadmtest.NewServer(t, "mail-a", doveadmtest.NewTracker(t))
	roles := map[string][]string{
		"ingest": {"ingest", "--broker-url", "http://127.0.0.1:1"},
		"broker": {"broker", "--subscriber", "dovewarden-sync-high=http://127.0.0.1:1,dovewarden-sync-low=http://127.0.0.1:1"},
		"sync": {"sync", "--redis-url", "redis://" + mr.Addr(), "--doveadm-url", fake.APIURL(),
			"--destination", "tcp:127.0.0.1:1"},
	}
	for role, args := range roles {
		t.Run(role, func(t *testing.T) {
			addr := freePort(t)
			c := startChild(t, "http://"+addr, []string{"DOVEWARDEN_DOVEADM_PASSWORD=" + doveadmtest.Password},
				append(args, "--listen", addr)...)
			_ = c.cmd.Process.Signal(syscall.SIGHUP)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(c.stderr.String(), "SIGHUP: nothing to reload") {
				select {
				case <-c.done:
					t.Fatalf("SIGHUP ended %s (%v):\n%s", role, c.cmd.ProcessState, c.stderr)
				case <-time.After(20 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("no word of the SIGHUP:\n%s", c.stderr)
				}
			}
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("after SIGHUP: %v %v\n%s", resp, err, c.stderr)
			}
			resp.Body.Close()
			c.stop(t)
		})
	}
}

// TestLocal_StopDuringStartIsClean: a SIGTERM while the start waits for
// Redis (systemctl stop of a unit still starting) ends the process with
// status 0 and says so, instead of failing with an error that blames Redis.
func TestLocal_StopDuringStartIsClean(t *testing.T) {
	cmd := exec.Command(os.Args[0], "local", "--listen", freePort(t), "--redis-url", "redis://"+redistest.Silent(t),
		"--doveadm-url", "http://127.0.0.1:1", "--destination", "tcp:127.0.0.1:1")
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "DOVEWARDEN_DOVEADM_PASSWORD=x")
	var out safebuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit %v after a stop during the start:\n%s", err, &out)
		}
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("still running 15 s after SIGTERM:\n%s", &out)
	}
	if !strings.Contains(out.String(), "stopped before the start was done") {
		t.Errorf("no word of the stop:\n%s", &out)
	}
}
