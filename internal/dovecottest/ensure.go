package dovecottest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Supported Dovecot versions.
const (
	V23 = "2.3"
	V24 = "2.4"
)

// DefaultRoot24 is where the Dovecot 2.4 (Debian trixie) tree is built when
// DOVEWARDEN_DOVECOT24_ROOT is not set. It lies outside the repository.
const DefaultRoot24 = "/var/cache/dovewarden/dovecot-2.4-trixie"

// Root24Env names the environment variable that overrides DefaultRoot24.
const Root24Env = "DOVEWARDEN_DOVECOT24_ROOT"

// vmail is the system user owning all test mail.
const (
	vmailName = "vmail"
	vmailID   = 5000
)

// Root24 returns the directory holding the Dovecot 2.4 chroot tree.
func Root24() string {
	if r := os.Getenv(Root24Env); r != "" {
		return filepath.Clean(r)
	}
	return DefaultRoot24
}

// Ensure makes Dovecot of the given version ("2.3" or "2.4") available on
// this machine, installing it when missing. It is idempotent and fast when
// everything is already there, and serialised across processes by a file
// lock. It needs root.
func Ensure(version string) error {
	switch version {
	case V23:
		if ready23() {
			return nil
		}
	case V24:
		if ready24() {
			return nil
		}
	default:
		return fmt.Errorf("dovecottest: unsupported version %q (want %q or %q)", version, V23, V24)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("dovecottest: installing Dovecot %s needs root", version)
	}
	unlock, err := lockFile(lockPath())
	if err != nil {
		return err
	}
	defer unlock()
	if version == V23 {
		return ensure23()
	}
	return ensure24()
}

func lockPath() string {
	return filepath.Join(filepath.Dir(Root24()), ".dovecottest.lock")
}

// lockFile takes an exclusive flock on path, creating it (and its parent).
func lockFile(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("dovecottest: create lock dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("dovecottest: open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("dovecottest: flock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// sbinPath makes sure sbin folders are searched whatever the caller's PATH.
const sbinPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Binaries of the Debian packages (host for 2.3, chroot for 2.4).
const (
	dovecotBin = "/usr/sbin/dovecot"
	binDir     = "/usr/bin/"
)

// Packages23 are the Debian packages of Dovecot 2.3 that Ensure installs.
var Packages23 = []string{"dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-pop3d"}

// Missing says what Ensure(version) would still have to install or create
// on this machine, one item each, for someone who cannot run it (not
// root); none when Dovecot of that version is ready. Any user can call it.
func Missing(version string) []string {
	var m []string
	switch version {
	case V23:
		if exec.Command(dovecotBin, "--version").Run() != nil {
			m = append(m, "Dovecot 2.3: apt-get install "+strings.Join(Packages23, " "))
		}
	case V24:
		root := Root24()
		if _, err := os.Stat(filepath.Join(root, "usr/sbin/dovecot")); err != nil {
			m = append(m, "Dovecot 2.4: a Debian trixie tree at "+root+" made with mmdebstrap "+
				"(apt-get install mmdebstrap; the folder is "+Root24Env+" when set)")
		} else if !hasEntry(filepath.Join(root, "etc/passwd"), vmailName) || !hasEntry(filepath.Join(root, "etc/group"), vmailName) {
			m = append(m, fmt.Sprintf("the %s user and group (id %d) in %s/etc/passwd and group", vmailName, vmailID, root))
		}
	default:
		return []string{fmt.Sprintf("Dovecot %s: unsupported (want %s or %s)", version, V23, V24)}
	}
	if !hasEntry("/etc/passwd", vmailName) || !hasEntry("/etc/group", vmailName) {
		m = append(m, fmt.Sprintf("the %s user and group (id %d) that owns the mail", vmailName, vmailID))
	}
	return m
}

func ready23() bool {
	if exec.Command(dovecotBin, "--version").Run() != nil {
		return false
	}
	return hasEntry("/etc/passwd", vmailName) && hasEntry("/etc/group", vmailName)
}

func ready24() bool {
	root := Root24()
	if _, err := os.Stat(filepath.Join(root, "usr/sbin/dovecot")); err != nil {
		return false
	}
	return hasEntry("/etc/passwd", vmailName) && hasEntry("/etc/group", vmailName) &&
		hasEntry(filepath.Join(root, "etc/passwd"), vmailName) &&
		hasEntry(filepath.Join(root, "etc/group"), vmailName)
}

func ensure23() error {
	if exec.Command(dovecotBin, "--version").Run() != nil {
		if err := aptInstall(Packages23...); err != nil {
			return err
		}
	}
	return ensureVmailHost()
}

func ensure24() error {
	if err := ensureVmailHost(); err != nil {
		return err
	}
	root := Root24()
	if _, err := os.Stat(filepath.Join(root, "usr/sbin/dovecot")); err != nil {
		if err := buildRoot24(root); err != nil {
			return err
		}
	}
	if err := ensureEntry(filepath.Join(root, "etc/group"), vmailName, fmt.Sprintf("%s:x:%d:\n", vmailName, vmailID)); err != nil {
		return err
	}
	line := fmt.Sprintf("%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n", vmailName, vmailID, vmailID)
	return ensureEntry(filepath.Join(root, "etc/passwd"), vmailName, line)
}

// buildRoot24 runs mmdebstrap into a temporary sibling of root and renames
// it into place only when complete. The caller holds the lock.
func buildRoot24(root string) error {
	if _, err := os.Stat("/usr/bin/mmdebstrap"); err != nil {
		if err := aptInstall("mmdebstrap"); err != nil {
			return err
		}
	}
	parent := filepath.Dir(root)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("dovecottest: create %s: %w", parent, err)
	}
	prefix := "." + filepath.Base(root) + ".tmp-"
	// Under the lock every temporary sibling is a leftover of an interrupted build.
	if old, _ := filepath.Glob(filepath.Join(parent, prefix+"*")); len(old) > 0 {
		for _, o := range old {
			_ = os.RemoveAll(o)
		}
	}
	if _, err := os.Stat(root); err == nil {
		// A root without dovecot is not ours to trust: move it aside.
		if err := os.RemoveAll(root); err != nil {
			return fmt.Errorf("dovecottest: remove incomplete %s: %w", root, err)
		}
	}
	tmp := filepath.Join(parent, fmt.Sprintf("%s%d", prefix, os.Getpid()))
	cmd := exec.Command("mmdebstrap", "--variant=essential",
		"--include=dovecot-core,dovecot-imapd,dovecot-lmtpd,dovecot-pop3d", "trixie", tmp)
	cmd.Env = append(os.Environ(), sbinPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("dovecottest: mmdebstrap trixie: %w\n%s", err, tail(out, 4000))
	}
	if _, err := os.Stat(filepath.Join(tmp, "usr/sbin/dovecot")); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("dovecottest: mmdebstrap produced no dovecot: %w", err)
	}
	if err := os.Rename(tmp, root); err != nil {
		return fmt.Errorf("dovecottest: rename %s into place: %w", tmp, err)
	}
	return nil
}

// aptInstall installs packages, running apt-get update and retrying once
// if the first attempt fails.
func aptInstall(pkgs ...string) error {
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", append([]string{"install", "-y"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", sbinPath)
		return cmd.CombinedOutput()
	}
	if _, err := install(); err == nil {
		return nil
	}
	update := exec.Command("apt-get", "update")
	update.Env = append(os.Environ(), sbinPath)
	if out, err := update.CombinedOutput(); err != nil {
		return fmt.Errorf("dovecottest: apt-get update: %w\n%s", err, tail(out, 2000))
	}
	if out, err := install(); err != nil {
		return fmt.Errorf("dovecottest: apt-get install %s: %w\n%s", strings.Join(pkgs, " "), err, tail(out, 4000))
	}
	return nil
}

// ensureVmailHost creates the vmail group and user (id 5000) on the host.
func ensureVmailHost() error {
	if !hasEntry("/etc/group", vmailName) {
		out, err := exec.Command("/usr/sbin/groupadd", "-g", fmt.Sprint(vmailID), vmailName).CombinedOutput()
		if err != nil && !hasEntry("/etc/group", vmailName) {
			return fmt.Errorf("dovecottest: groupadd vmail: %w: %s", err, out)
		}
	}
	if !hasEntry("/etc/passwd", vmailName) {
		out, err := exec.Command("/usr/sbin/useradd", "-u", fmt.Sprint(vmailID), "-g", vmailName,
			"-d", "/nonexistent", "-M", "-s", "/usr/sbin/nologin", vmailName).CombinedOutput()
		if err != nil && !hasEntry("/etc/passwd", vmailName) {
			return fmt.Errorf("dovecottest: useradd vmail: %w: %s", err, out)
		}
	}
	return nil
}

// hasEntry reports whether a passwd/group style file has a line for name.
func hasEntry(path, name string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+":") {
			return true
		}
	}
	return false
}

// ensureEntry appends line to path unless it already has an entry for name.
func ensureEntry(path, name, line string) error {
	if hasEntry(path, name) {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("dovecottest: read %s: %w", path, err)
	}
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
		b = append(b, '\n')
	}
	b = append(b, line...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("dovecottest: write %s: %w", path, err)
	}
	return nil
}

// tail returns at most the last n bytes of b as a string.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
