package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStart_AnswerFromAnotherProcess: the port freePort found free can be
// taken by another process (another test binary's redis-server) before
// the one start launched binds it. start must not take that other
// server's answers for its own: here the launched "redis-server" never
// listens, and a Redis that another process runs answers on its port.
func TestStart_AnswerFromAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	portFile := filepath.Join(dir, "port")
	bin := filepath.Join(dir, "redis-server")
	script := "#!/bin/sh\n# args: --port PORT ...\necho \"$2\" > " + portFile + ".tmp && mv " + portFile + ".tmp " + portFile + "\nexec sleep 600\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// The other process's Redis, in this test's process: it listens on
	// the port the launched one was given, once that is known.
	stop := otherProcessOn(t, portFile)
	defer stop()
	s, err := start(bin, t.TempDir(), Options{})
	if err == nil {
		s.stop()
		t.Fatalf("start took the answers of another process on %s for the server it launched (PID %d)", s.Addr, s.cmd.Process.Pid)
	}
	t.Logf("start: %v", err)
}

// TestStartSentinel_AnswerFromAnotherProcess: as TestStart_AnswerFromAnotherProcess, for a
// Sentinel: another process's Sentinel on the port its configuration
// names is not the one launched.
func TestStartSentinel_AnswerFromAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	portFile := filepath.Join(dir, "port")
	bin := filepath.Join(dir, "redis-server")
	script := "#!/bin/sh\n# args: CONF --sentinel\nsed -n 's/^port //p' \"$1\" > " + portFile + ".tmp && mv " + portFile + ".tmp " + portFile + "\nexec sleep 600\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	stop := otherProcessOn(t, portFile)
	defer stop()
	primary := &Server{Addr: "127.0.0.1:6379"}
	s, err := startSentinel(bin, t.TempDir(), primary, "dw")
	if err == nil {
		s.stop()
		t.Fatalf("startSentinel took the answers of another process on %s for the Sentinel it launched (PID %d)", s.Addr, s.p.cmd.Process.Pid)
	}
	t.Logf("startSentinel: %v", err)
}

// otherProcessOn serves, as another process's Redis (PID 1), on the port
// written to portFile once it is there; stop ends it.
func otherProcessOn(t *testing.T, portFile string) (stop func()) {
	t.Helper()
	quit := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-quit:
				return
			default:
			}
			b, err := os.ReadFile(portFile)
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strings.TrimSpace(string(b))))
			if err != nil {
				t.Errorf("listen on the launched server's port: %v", err)
				return
			}
			go func() { <-quit; ln.Close() }()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go fakeRedis(c, 1) // another process: PID 1
			}
		}
	}()
	return func() { close(quit); <-stopped }
}

// fakeRedis answers RESP commands on c as a Redis whose process is pid.
func fakeRedis(c net.Conn, pid int) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "*") {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		var args []string
		for i := 0; i < n; i++ {
			h, err := r.ReadString('\n')
			if err != nil {
				return
			}
			l, _ := strconv.Atoi(strings.TrimSpace(h[1:]))
			b := make([]byte, l+2)
			if _, err := io.ReadFull(r, b); err != nil {
				return
			}
			args = append(args, string(b[:l]))
		}
		var out string
		switch strings.ToUpper(args[0]) {
		case "HELLO":
			out = "-ERR unknown command 'HELLO'\r\n"
		case "PING":
			out = "+PONG\r\n"
		case "SENTINEL":
			out = "*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n"
		case "INFO":
			info := fmt.Sprintf("# Server\r\nredis_version:7.0.15\r\nprocess_id:%d\r\n", pid)
			out = fmt.Sprintf("$%d\r\n%s\r\n", len(info), info)
		default:
			out = "+OK\r\n"
		}
		if _, err := io.WriteString(c, out); err != nil {
			return
		}
	}
}
