// Package systemdconfig holds the systemd unit for `dovewarden local`; its
// test checks the unit with systemd's own verifier and runs the binary with
// the unit's environment file.
package systemdconfig

import (
	"bufio"
	"bytes"
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

	"github.com/dovewarden/dovewarden-knative/internal/debian"
	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// build compiles dovewarden into the test's folder.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dovewarden")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/dovewarden/dovewarden-knative/cmd/dovewarden").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// TestUnit_Verifies runs `systemd-analyze verify` on the unit, with its
// ExecStart and EnvironmentFile pointed at a built binary and the shipped
// environment file. systemd answers 0 even for unknown keys and bad values
// and only prints them, so any output fails the test. A missing
// systemd-analyze is installed (Debian's systemd package) when the test
// runs as root, as in CI; only without root is the test skipped.
func TestUnit_Verifies(t *testing.T) {
	analyze, err := debian.Ensure("systemd-analyze", "systemd")
	if errors.Is(err, debian.ErrNotRoot) && os.Geteuid() != 0 {
		t.Skipf("systemd-analyze, so the unit cannot be verified here: %v", err)
	}
	if err != nil {
		t.Fatalf("systemd-analyze: %v", err)
	}
	unit, err := os.ReadFile("dovewarden-local.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	envFile, err := filepath.Abs("local.env")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("ExecStart=/usr/local/bin/dovewarden ", "ExecStart="+build(t)+" ",
		"EnvironmentFile=/etc/dovewarden/local.env", "EnvironmentFile="+envFile).Replace(string(unit))
	if text == string(unit) {
		t.Fatal("the unit's ExecStart or EnvironmentFile is not the documented one")
	}
	path := filepath.Join(dir, "dovewarden-local.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestEnvFile_RunsLocal starts `dovewarden local` with exactly the shipped
// environment file's settings (only the listen address, the doveadm
// password file and the spool file are the test's), waits until it is ready and stops it with
// SIGTERM, as systemd does. That every variable in the file is a setting
// of local is cmd/dovewarden's TestManifests_SetOnlySettings.
func TestEnvFile_RunsLocal(t *testing.T) {
	bin := build(t)
	f, err := os.Open("local.env")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			env = append(env, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(env) == 0 {
		t.Fatal("local.env sets nothing")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	password := filepath.Join(t.TempDir(), "doveadm-password")
	if err := os.WriteFile(password, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// systemd makes the StateDirectory; the test has its own.
	spool := filepath.Join(t.TempDir(), "broker.spool")
	env = append(env, "DOVEWARDEN_LISTEN="+addr, "DOVEWARDEN_DOVEADM_PASSWORD_FILE="+password, "DOVEWARDEN_SPOOL_FILE="+spool)
	cmd := exec.Command(bin, "local")
	// Only what systemd would give it: the file's variables, no others.
	cmd.Env = env
	var out safebuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	exited := make(chan struct{})
	go func() { exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	if err := waitReady(exited, "http://"+addr+"/readyz"); err != nil {
		<-exited
		t.Fatalf("%v\n%s", err, out.String())
	}
	// The unit's ExecReload: SIGHUP reloads, and never ends the process.
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := waitLog(exited, &out, "SIGHUP"); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if err := waitReady(exited, "http://"+addr+"/readyz"); err != nil {
		t.Fatalf("after SIGHUP: %v\n%s", err, out.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if exitErr != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", exitErr, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30 s (the unit's TimeoutStopSec) after SIGTERM\n%s", out.String())
	}
}

// waitLog waits until the process's output has want, for up to 10 s,
// or the process exits (exited is closed).
func waitLog(exited <-chan struct{}, out *safebuf.Buffer, want string) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(out.String(), want) {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before logging %q", want)
		default:
		}
	}
	return fmt.Errorf("no %q logged in 10 s", want)
}

// waitReady polls url until it answers 200, the process exits (exited is
// closed) or 20 s pass.
func waitReady(exited <-chan struct{}, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		select {
		case <-exited:
			return fmt.Errorf("dovewarden local exited")
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within 20 s", url)
}

// TestUnit_StopTimeoutFitsTheStop: a stop takes at most the shutdown
// timeout (the listener's and the lanes'), 10 s more for cancelled
// requests to answer (pkg/server's drain), 5 s to mark what the lanes held
// pending (markUndeliveredBudget) and the spool file's write: systemd must
// not kill the process before, or the spool is lost.
func TestUnit_StopTimeoutFitsTheStop(t *testing.T) {
	unit, err := os.ReadFile("dovewarden-local.service")
	if err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile("local.env")
	if err != nil {
		t.Fatal(err)
	}
	setting := func(text []byte, key, def string) time.Duration {
		t.Helper()
		v := def
		for _, line := range strings.Split(string(text), "\n") {
			if strings.HasPrefix(line, key+"=") {
				v = strings.TrimPrefix(line, key+"=")
			}
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", key, v, err)
		}
		return d
	}
	stopTimeout := setting(unit, "TimeoutStopSec", "90s")
	shutdown := setting(env, "DOVEWARDEN_SHUTDOWN_TIMEOUT", "10s")
	if need := shutdown + 15*time.Second + time.Second; stopTimeout < need {
		t.Errorf("TimeoutStopSec %v: a stop with shutdown timeout %v may take %v", stopTimeout, shutdown, need)
	}
}
