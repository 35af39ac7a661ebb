// Package debian finds a program that tests need and, when it is missing,
// installs the Debian package that holds it, so that a fresh machine runs
// the tests with nothing but Go and root.
package debian

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// ErrNotRoot is returned when the program is missing and this process
// cannot install it.
var ErrNotRoot = errors.New("installing it needs root")

var found sync.Map // program name -> path

// Ensure returns the path of program, installing pkgs (without their
// recommended packages) when it is missing. Concurrent test binaries wait
// on a file lock, and the second finds it installed.
func Ensure(program string, pkgs ...string) (string, error) {
	if p, ok := found.Load(program); ok {
		return p.(string), nil
	}
	if bin, err := lookup(program); err == nil {
		found.Store(program, bin)
		return bin, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("%s is not installed (Debian package %s) and %w", program, strings.Join(pkgs, " "), ErrNotRoot)
	}
	unlock, err := lockFile(filepath.Join(os.TempDir(), "dovewarden-apt.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if bin, err := lookup(program); err == nil {
		found.Store(program, bin)
		return bin, nil
	}
	if err := install(pkgs...); err != nil {
		return "", err
	}
	bin, err := lookup(program)
	if err != nil {
		return "", fmt.Errorf("%s installed but not found: %w", strings.Join(pkgs, " "), err)
	}
	found.Store(program, bin)
	return bin, nil
}

func lookup(program string) (string, error) {
	if bin, err := exec.LookPath(program); err == nil {
		return bin, nil
	}
	// /usr/sbin, even /usr/bin, may be missing from a minimal PATH.
	for _, dir := range []string{"/usr/bin", "/usr/sbin"} {
		p := filepath.Join(dir, program)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", program)
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("flock %s: %w", path, err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// lockWait makes apt-get wait for dpkg's lock, which another test's apt-get
// (dovecottest's) may hold, instead of failing at once.
const lockWait = "DPkg::Lock::Timeout=300"

// install installs Debian packages; when the first try fails (a stale
// package list) it runs apt-get update and tries once more.
func install(pkgs ...string) error {
	try := func() ([]byte, error) {
		cmd := exec.Command("apt-get", append([]string{"-o", lockWait, "install", "-y", "--no-install-recommends"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := try(); err == nil {
		return nil
	}
	if out, err := exec.Command("apt-get", "-o", lockWait, "update").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, tail(out))
	}
	if out, err := try(); err != nil {
		return fmt.Errorf("apt-get install %s: %w\n%s", strings.Join(pkgs, " "), err, tail(out))
	}
	return nil
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
