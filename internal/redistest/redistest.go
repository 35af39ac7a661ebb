// Package redistest starts a real redis-server on a free 127.0.0.1 port for
// integration tests, installing Debian's redis-server package first when
// the binary is missing (idempotent, serialised by a file lock). A server
// may speak TLS only, listen on a Unix socket instead, or replicate
// another; a Sentinel may watch one.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/debian"
)

// Server is a running redis-server owned by one test.
type Server struct {
	// Addr is "127.0.0.1:port", or with Options.Unix the socket's path.
	Addr string
	// TLS is set when the server speaks TLS only: the files a client
	// needs.
	TLS  *TLSFiles
	unix bool
	*process
}

// Options shape the server Start starts.
type Options struct {
	// TLS: the server listens with TLS only and requires a client
	// certificate (redis-server's default tls-auth-clients). Its CA,
	// certificate and keys are new, in the test's temporary folder.
	TLS bool
	// ReplicaOf makes the server a replica of another. A replica of a TLS
	// server speaks TLS too, with the primary's CA and certificates, and
	// replicates over TLS.
	ReplicaOf *Server
	// Unix: the server listens on a Unix socket only.
	Unix bool
	// Cluster: the server runs in cluster mode (one node, no slots).
	Cluster bool
}

// URL is the server's redis:// URL (rediss:// with TLS, unix:// on a
// socket).
func (s *Server) URL() string {
	switch {
	case s.TLS != nil:
		return "rediss://" + s.Addr + "/0"
	case s.unix:
		return "unix://" + s.Addr
	}
	return "redis://" + s.Addr + "/0"
}

// Client returns a new client of the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	o, err := s.options()
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// Stop stops the server before the test ends (SIGTERM, SIGKILL after
// 5 s), for tests of what happens when Redis goes away. The cleanup's
// stop then does nothing.
func (s *Server) Stop() { s.stop() }

func (s *Server) options() (*redis.Options, error) {
	o := &redis.Options{Addr: s.Addr}
	if s.unix {
		o.Network = "unix"
	}
	if s.TLS != nil {
		tc, err := s.TLS.Config()
		if err != nil {
			return nil, err
		}
		o.TLSConfig = tc
	}
	return o, nil
}

// Start starts a plain redis-server for t and stops it when t ends. It
// installs redis-server when missing; as a non-root user that cannot
// install, it skips the test with the reason.
func Start(t testing.TB) *Server { return StartWith(t, Options{}) }

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	bin := binary(t)
	if o.ReplicaOf != nil && (o.Unix || o.ReplicaOf.unix) {
		t.Fatal("redistest: replicas on Unix sockets are not supported")
	}
	if o.ReplicaOf != nil && o.ReplicaOf.TLS != nil {
		o.TLS = true
	}
	if o.TLS && o.Unix {
		t.Fatal("redistest: TLS over a Unix socket is not supported")
	}
	return tryStart(t, func() (*Server, error) { return start(bin, t.TempDir(), o) })
}

// tryStart calls start up to five times, each on a port of its own
// (another process may take the one found free before the launch), stops
// what it started when t ends, and fails t with the last error.
func tryStart[T interface{ stop() }](t testing.TB, start func() (T, error)) T {
	t.Helper()
	var last error
	for range 5 {
		s, err := start()
		if err == nil {
			t.Cleanup(s.stop)
			return s
		}
		last = err
	}
	t.Fatalf("redistest: %v", last)
	var none T
	return none
}

// binary returns redis-server's path, installing it when missing, or
// skips t when it cannot be installed without root.
func binary(t testing.TB) string {
	t.Helper()
	bin, err := Ensure()
	if err != nil {
		if os.Geteuid() != 0 && errors.Is(err, debian.ErrNotRoot) {
			t.Skipf("redistest: %v", err)
		}
		t.Fatalf("redistest: %v", err)
	}
	return bin
}

func start(bin, dir string, o Options) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	args := []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--loglevel", "warning"}
	if o.TLS {
		if o.ReplicaOf != nil && o.ReplicaOf.TLS != nil {
			s.TLS = o.ReplicaOf.TLS
		} else if s.TLS, err = newTLSFiles(dir); err != nil {
			return nil, fmt.Errorf("certificates: %w", err)
		}
		args = append(args, s.TLS.serverArgs(port)...)
	}
	if o.Cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"))
	}
	if o.Unix {
		s.unix, s.Addr = true, filepath.Join(dir, "redis.sock")
		args = append(args, "--port", "0", "--unixsocket", s.Addr, "--unixsocketperm", "700")
	}
	if o.ReplicaOf != nil {
		if o.ReplicaOf.TLS != nil {
			args = append(args, "--tls-replication", "yes")
		}
		host, p, _ := net.SplitHostPort(o.ReplicaOf.Addr)
		args = append(args, "--replicaof", host, p)
	}
	if s.process, err = launch(bin, args); err != nil {
		return nil, err
	}
	ro, err := s.options()
	if err != nil {
		s.stop()
		return nil, err
	}
	ro.MaxRetries, ro.DialTimeout = -1, 200*time.Millisecond
	c := redis.NewClient(ro)
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		if err == nil {
			// Another process may have bound the port between freePort
			// and the launch: its answer is not this server's.
			err = s.answers(ctx, c)
			cancel()
			if err != nil {
				s.stop()
				return nil, fmt.Errorf("redis-server on port %d: %w", port, err)
			}
			return s, nil
		}
		cancel()
		select {
		case <-s.done:
			return nil, fmt.Errorf("redis-server on port %d exited: %s", port, strings.TrimSpace(s.out.String()))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("redis-server on port %d not answering: %v", port, err)
		}
	}
}

// answers checks that the server c reaches is the process launched, not
// another one that bound the port first: its INFO names its PID.
func (p *process) answers(ctx context.Context, c *redis.Client) error {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return fmt.Errorf("INFO server: %w", err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "process_id:"); ok {
			if pid, _ := strconv.Atoi(v); pid != p.cmd.Process.Pid {
				return fmt.Errorf("answered by process %d, not the one launched (%d): the port was taken", pid, p.cmd.Process.Pid)
			}
			return nil
		}
	}
	return errors.New("INFO server: no process_id")
}

// process is a running redis-server (a server or a Sentinel).
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	out  *strings.Builder
}

// launch starts bin with args. The process dies with the test binary even
// if cleanup never runs.
func launch(bin string, args []string) (*process, error) {
	p := &process{cmd: exec.Command(bin, args...), done: make(chan struct{}), out: &strings.Builder{}}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// stop sends SIGTERM and, after 5 s, SIGKILL.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Ensure returns the path of redis-server, installing the Debian package
// redis-server when it is missing.
func Ensure() (string, error) { return debian.Ensure("redis-server", "redis-server") }

// Freeze stops the server with SIGSTOP, as a Redis that hangs (a paused
// VM, a network partition that drops packets): its connections stay open
// and the kernel still completes new ones, but nothing is answered. The
// returned thaw (SIGCONT) resumes it with its data; it is idempotent and
// runs at the test's cleanup too, before the server's stop.
func (s *Server) Freeze(t testing.TB) (thaw func()) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("redistest: SIGSTOP: %v", err)
	}
	var once sync.Once
	thaw = func() { once.Do(func() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }) }
	t.Cleanup(thaw)
	return thaw
}
