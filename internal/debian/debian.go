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
	allow, err := NoServiceStarts()
	if err != nil {
		return "", err
	}
	defer allow()
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

// lockWait makes apt-get wait for dpkg's lock, which an apt-get of the
// machine's own may hold, instead of failing at once.
const lockWait = "DPkg::Lock::Timeout=300"

// PolicyRC is Debian's policy-rc.d, which invoke-rc.d and
// deb-systemd-invoke ask whether a maintainer script may start, stop or
// restart a service. A variable, so that tests can use another path.
var PolicyRC = "/usr/sbin/policy-rc.d"

// policyRCMark tells the policy-rc.d that NoServiceStarts writes from the
// machine's own; policyRCMarkPrefix also matches what earlier versions
// wrote.
const (
	policyRCMarkPrefix = "# Written by dovewarden's internal/"
	policyRCMark       = policyRCMarkPrefix + "debian for the time of its apt-get install"
	policyRCText       = "#!/bin/sh\n" + policyRCMark + ",\n" +
		"# so that the packages' maintainer scripts start or restart no service.\n" +
		"# It removes this file when the install ends, or at its next install.\n" +
		"exit 101\n"
)

// NoServiceStarts makes the maintainer scripts of packages installed
// until the returned function is called start, stop or restart no service:
// redis-server's and prometheus's would start the system's own, and
// dovecot-core's the system's dovecot.service. It takes a lock that every
// install of this package and of dovecottest takes, so that one install's
// policy-rc.d is not removed under another, and writes a policy-rc.d that
// forbids every action (exit status 101). A policy-rc.d of the machine's
// own (as Docker's Debian images have) is left as it is, and is then what
// decides. One that an earlier install left (a process killed during
// apt-get) is replaced: under the lock no other install runs. Other
// apt-get runs on the machine in the meantime start no service either.
func NoServiceStarts() (func(), error) {
	unlock, err := Lock()
	if err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(PolicyRC); err == nil && strings.Contains(string(b), policyRCMarkPrefix) {
		_ = os.Remove(PolicyRC)
	}
	f, err := os.OpenFile(PolicyRC, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if errors.Is(err, os.ErrExist) {
		return unlock, nil
	}
	if err != nil {
		unlock()
		return nil, fmt.Errorf("create %s: %w", PolicyRC, err)
	}
	allow := func() {
		_ = os.Remove(PolicyRC)
		unlock()
	}
	_, err = f.WriteString(policyRCText)
	if err == nil {
		err = f.Chmod(0o755) // whatever the umask
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		allow()
		return nil, fmt.Errorf("write %s: %w", PolicyRC, err)
	}
	return allow, nil
}

// Lock takes the lock every apt-get run of the tests and the demo holds
// (NoServiceStarts takes it too: not within it), until the returned
// function is called: apt-get refuses to run while another holds apt's
// own locks.
func Lock() (func(), error) {
	return lockFile(filepath.Join(os.TempDir(), "dovewarden-apt.lock"))
}

// runCommand runs apt-get and returns its combined output. A variable, so
// that tests can stand in for it.
var runCommand = func(cmd *exec.Cmd) ([]byte, error) { return cmd.CombinedOutput() }

// install installs Debian packages (the caller called NoServiceStarts); when the first try fails (a stale
// package list) it runs apt-get update and tries once more.
func install(pkgs ...string) error {
	try := func() ([]byte, error) {
		cmd := exec.Command("apt-get", append([]string{"-o", lockWait, "install", "-y", "--no-install-recommends"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return runCommand(cmd)
	}
	if _, err := try(); err == nil {
		return nil
	}
	if out, err := runCommand(exec.Command("apt-get", "-o", lockWait, "update")); err != nil {
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
