package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long a process gets to exit after SIGTERM before it is
// killed: dovewarden's own --shutdown-timeout (10 s) plus a margin.
const stopGrace = 12 * time.Second

// proc is one process the suite starts (dovewarden, redis-server): its
// output goes to a log file that is printed when the test fails, and it is
// stopped by its PID when the test ends, whatever happened.
type proc struct {
	t    testing.TB
	name string
	bin  string
	args []string
	env  []string
	log  string

	cmd  *exec.Cmd
	done chan struct{}
}

// newProc prepares a process; start runs it. The cleanup that stops it
// and prints its log on failure is registered here, once, so a restarted
// process is covered too.
func newProc(t testing.TB, dir, name, bin string, args, env []string) *proc {
	p := &proc{t: t, name: name, bin: bin, args: args, env: env, log: filepath.Join(dir, name+".log")}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s log (%s), last lines ---\n%s", p.name, p.log, tailFile(p.log, 300))
		}
	})
	return p
}

// start runs the process (appending to its log).
func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s start: %s %s\n", time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, and killed if the test binary dies before
	// its cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() { _ = cmd.Wait(); close(done) }()
}

// running reports whether the process was started and has not exited.
func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits, then SIGKILLs. It does nothing when the
// process is not running.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		p.t.Logf("%s (pid %d) ignored SIGTERM for %s: killing it", p.name, p.cmd.Process.Pid, stopGrace)
		p.kill()
	}
}

// kill sends SIGKILL and waits for the exit.
func (p *proc) kill() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// checkAlive fails the test if the process died on its own: a crash is a
// product bug, not something to wait out.
func (p *proc) checkAlive() {
	p.t.Helper()
	if p.cmd != nil && !p.running() {
		p.t.Fatalf("%s exited on its own (%v); log:\n%s", p.name, p.cmd.ProcessState, tailFile(p.log, 40))
	}
}

// waitHTTP waits until GET url answers 200, failing the test when the
// process dies first or after limit.
func (p *proc) waitHTTP(url string, limit time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(limit)
	c := &http.Client{Transport: httpClient.Transport, Timeout: time.Second}
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		p.checkAlive()
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: %s not ready after %s (last error %v); log:\n%s", p.name, url, limit, err, tailFile(p.log, 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a listener on a free 127.0.0.1 port. The caller keeps
// it open while other components pick their own free ports (so none takes
// this one) and closes it just before the process that binds the port
// starts.
func freeAddr(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// poll calls check every interval until it returns nil, ctx ends or limit
// passes, and returns check's last error then.
func poll(ctx context.Context, limit, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// errNotYet is a poll condition that has not come true yet.
type errNotYet string

func (e errNotYet) Error() string { return "not yet: " + string(e) }
