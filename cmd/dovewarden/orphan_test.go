//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLocal_DsyncsDoNotOutliveTheProcess: a dsync run through
// doveadm-exec ends with the process that started it, when a second
// Ctrl-C ends that at once (the whole process group: a wrapper's doveadm
// child too) and when it is killed (SIGKILL, the out-of-memory killer:
// doveadm itself, by its parent-death signal). Left running, it ran
// beside the next start's dsync of the same user, whose lock had died
// with the embedded Redis.
func TestLocal_DsyncsDoNotOutliveTheProcess(t *testing.T) {
	for _, tc := range []struct {
		name, sync string
		end        func(t *testing.T, c *child)
	}{
		{"second interrupt, a wrapper's child", `sleep 120 & echo $! >> "$PIDS"; wait`, func(t *testing.T, c *child) {
			_ = c.cmd.Process.Signal(os.Interrupt)
			time.Sleep(time.Second)
			c.signal(t, syscall.SIGINT, 10*time.Second)
			if ws, _ := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGINT {
				t.Errorf("the process ended with %v, want killed by SIGINT", c.cmd.ProcessState)
			}
		}},
		{"killed, doveadm itself", `echo $$ >> "$PIDS"; exec sleep 120`, func(t *testing.T, c *child) {
			c.kill(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pids := filepath.Join(dir, "pids")
			bin := filepath.Join(dir, "doveadm")
			script := "#!/bin/sh\ncase \"$*\" in\n*sync*) " + tc.sync + ";;\nesac\nexit 0\n"
			if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			addr := freePort(t)
			c := startChild(t, "http://"+addr, []string{"PIDS=" + pids, "DOVEWARDEN_SHUTDOWN_TIMEOUT=50s"},
				"local", "--listen", addr, "--transport", "doveadm-exec", "--doveadm-bin", bin,
				"--destination", "tcp:127.0.0.1:1", "--workers", "1")
			postDovecotEvent(t, "http://"+addr, deliveryEvent)
			var pid int
			for deadline := time.Now().Add(15 * time.Second); pid == 0; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no dsync started:\n%s", c.stderr)
				}
				b, _ := os.ReadFile(pids)
				if f := strings.Fields(string(b)); len(f) > 0 {
					pid, _ = strconv.Atoi(f[0])
				}
			}
			t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
			if !running(pid) {
				t.Fatalf("the dsync (pid %d) is not running: the test shows nothing", pid)
			}
			tc.end(t, c)
			for deadline := time.Now().Add(5 * time.Second); running(pid); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the dsync (pid %d) still runs after dovewarden ended", pid)
				}
			}
		})
	}
}

// running tells whether pid is a process that has not ended (a zombie,
// waiting for its parent to reap it, has).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}
