package dovecottest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/debian"
	"golang.org/x/sys/unix"
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

// vmail is the system user owning all test mail. Ensure creates it (and
// its group) with vmailID where it is missing; one that exists already
// keeps its ids, which the instances look up (vmailIDs).
const (
	vmailName = "vmail"
	vmailID   = 5000
)

// vmailUser is the vmail user's uid and the vmail group's gid, as Dovecot
// resolves its config's mail_uid = vmail and mail_gid = vmail.
type vmailUser struct{ UID, GID int }

// vmailIDs looks up the vmail user and group in the passwd and group files
// under root ("" for the host, the trixie tree for Dovecot 2.4: the
// passwd that the Dovecot resolving "vmail" reads).
func vmailIDs(root string) (vmailUser, error) {
	uid, err := entryID(filepath.Join(root, "/etc/passwd"), vmailName)
	if err != nil {
		return vmailUser{}, err
	}
	gid, err := entryID(filepath.Join(root, "/etc/group"), vmailName)
	if err != nil {
		return vmailUser{}, err
	}
	return vmailUser{UID: uid, GID: gid}, nil
}

// entryID returns the id (the third field) of name's line in a passwd or
// group style file.
func entryID(path, name string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("dovecottest: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 3 || f[0] != name {
			continue
		}
		id, err := strconv.Atoi(f[2])
		if err != nil || id < 0 {
			return 0, fmt.Errorf("dovecottest: %s: bad id %q for %s", path, f[2], name)
		}
		return id, nil
	}
	return 0, fmt.Errorf("dovecottest: no %s in %s", name, path)
}

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
		if len(Missing(V23)) == 0 {
			return nil
		}
		if err := Unavailable(V23); err != nil {
			return err
		}
	case V24:
		if len(Missing(V24)) == 0 {
			if os.Geteuid() == 0 && hasOldRoots24(Root24()) {
				if unlock, err := lockFile(lockPath()); err == nil {
					reapOldRoots24(Root24())
					unlock()
				}
			}
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

// Packages are the Debian packages a test instance needs, on the host
// (2.3) and in the trixie tree (2.4).
var Packages = []string{"dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-pop3d",
	"dovecot-sieve", "dovecot-managesieved"}

// sieveFiles are files of dovecot-sieve and dovecot-managesieved (the same
// paths in bookworm and trixie) whose presence tells that both are
// installed. The doveadm plugin is what makes doveadm sync replicate Sieve
// scripts.
var sieveFiles = []string{
	"/usr/lib/dovecot/managesieve-login",
	"/usr/lib/dovecot/managesieve",
	"/usr/lib/dovecot/modules/lib90_sieve_plugin.so",
	"/usr/lib/dovecot/modules/doveadm/lib10_doveadm_sieve_plugin.so",
}

// hasFiles reports whether every file of files exists under root ("" for
// the host).
func hasFiles(root string, files []string) bool {
	for _, f := range files {
		if _, err := os.Stat(root + f); err != nil {
			return false
		}
	}
	return true
}

// VersionError says that Dovecot of the version asked for cannot be had
// on this machine from Debian: the Dovecot installed here is another
// version, or the one apt-get would install is (Debian 13 ships 2.4).
type VersionError struct {
	Want      string // the version asked for: "2.3"
	Have      string // the other version, e.g. "2.4.1"
	Installed bool   // Have is installed; otherwise apt-get would install it
}

func (e *VersionError) Error() string {
	if e.Installed {
		return fmt.Sprintf("dovecottest: Dovecot %s is needed, but the Dovecot installed here is %s", e.Want, e.Have)
	}
	return fmt.Sprintf("dovecottest: Dovecot %s is needed, but this machine's Debian ships Dovecot %s", e.Want, e.Have)
}

// runCommand runs a command and returns its combined output: apt-get and
// apt-cache go through it, so that tests can stand in for them.
var runCommand = func(cmd *exec.Cmd) ([]byte, error) { return cmd.CombinedOutput() }

// hostVersion returns the version of the host's Dovecot (the first word
// of `dovecot --version`, e.g. "2.3.19.1"), or "" when it does not run.
// A variable, so that tests can stand in for it.
var hostVersion = func() string {
	out, err := exec.Command(dovecotBin, "--version").Output()
	if err != nil {
		return ""
	}
	if f := strings.Fields(string(out)); len(f) > 0 {
		return f[0]
	}
	return ""
}

// isVersion reports whether v (e.g. "2.3.19.1") is of the release series
// want (e.g. "2.3").
func isVersion(v, want string) bool { return strings.HasPrefix(v, want+".") }

// candidateVersion returns the upstream version of the dovecot-core that
// apt-get would install (from `apt-cache policy`: "1:2.3.19.1+dfsg1-2.1"
// is "2.3.19.1"), or "" when apt knows none (no package lists yet).
func candidateVersion() string {
	cmd := exec.Command("apt-cache", "policy", "dovecot-core")
	cmd.Env = append(os.Environ(), sbinPath)
	out, err := runCommand(cmd)
	if err != nil {
		return ""
	}
	return parseCandidate(string(out))
}

// parseCandidate reads the candidate's upstream version from the output of
// `apt-cache policy PACKAGE`.
func parseCandidate(policy string) string {
	for _, l := range strings.Split(policy, "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(l), "Candidate:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if v == "" || v == "(none)" {
			return ""
		}
		if _, after, ok := strings.Cut(v, ":"); ok { // the epoch
			v = after
		}
		if i := strings.IndexAny(v, "+-~"); i >= 0 {
			v = v[:i]
		}
		return v
	}
	return ""
}

// Unavailable returns a *VersionError when Dovecot of the given version
// cannot be had on this machine from Debian: for 2.3, when the Dovecot
// installed here is another version or, none being installed, when the
// dovecot-core that apt-get would install is (as far as the package lists
// already here tell). The 2.4 tree is Debian trixie's on any machine.
// Any user can call it.
func Unavailable(version string) error {
	if version != V23 {
		return nil
	}
	if v := hostVersion(); v != "" {
		if !isVersion(v, V23) {
			return &VersionError{Want: V23, Have: v, Installed: true}
		}
		return nil
	}
	if v := candidateVersion(); v != "" && !isVersion(v, V23) {
		return &VersionError{Want: V23, Have: v}
	}
	return nil
}

// Missing says what Ensure(version) would still have to install or create
// on this machine, one item each, for someone who cannot run it (not
// root); none when Dovecot of that version is ready. Any user can call it.
// A Dovecot 2.3 that Debian here does not ship is reported as such (see
// Unavailable).
func Missing(version string) []string {
	var m []string
	switch version {
	case V23:
		var ve *VersionError
		if err := Unavailable(V23); errors.As(err, &ve) {
			m = append(m, strings.TrimPrefix(ve.Error(), "dovecottest: "))
		} else if !hasFiles("", sieveFiles) || hostVersion() == "" {
			m = append(m, "Dovecot 2.3: apt-get install "+strings.Join(Packages, " "))
		}
	case V24:
		root := Root24()
		if !hasFiles(root, append([]string{dovecotBin}, sieveFiles...)) {
			m = append(m, "Dovecot 2.4: a Debian trixie tree at "+root+" made with mmdebstrap "+
				"(apt-get install mmdebstrap; the folder is "+Root24Env+" when set)")
		} else if _, err := vmailIDs(root); err != nil {
			m = append(m, fmt.Sprintf("the %s user and group in %s/etc/passwd and group (%v)", vmailName, root,
				strings.TrimPrefix(err.Error(), "dovecottest: ")))
		}
	default:
		return []string{fmt.Sprintf("Dovecot %s: unsupported (want %s or %s)", version, V23, V24)}
	}
	if _, err := vmailIDs(""); err != nil {
		m = append(m, fmt.Sprintf("the %s user and group that own the mail (any ids; created with %d where free): %v",
			vmailName, vmailID, strings.TrimPrefix(err.Error(), "dovecottest: ")))
	}
	return m
}

// ensure23 installs Debian's Dovecot 2.3 packages when they are missing,
// and only Dovecot 2.3: a Dovecot of another version installed here, or a
// Debian that ships another (Debian 13 ships 2.4), is a *VersionError,
// before anything is installed.
func ensure23() error {
	v := hostVersion()
	if v != "" && !isVersion(v, V23) {
		return &VersionError{Want: V23, Have: v, Installed: true}
	}
	if v == "" || !hasFiles("", sieveFiles) {
		if v == "" {
			cand := candidateVersion()
			if cand == "" {
				// No package lists yet (a fresh container): fetch them
				// and ask again, not while another test installs.
				unlock, err := debian.Lock()
				if err != nil {
					return fmt.Errorf("dovecottest: %w", err)
				}
				err = aptUpdate()
				unlock()
				if err != nil {
					return err
				}
				cand = candidateVersion()
			}
			if cand == "" {
				return errors.New("dovecottest: apt knows no dovecot-core package (apt-cache policy dovecot-core names no candidate)")
			}
			if !isVersion(cand, V23) {
				return &VersionError{Want: V23, Have: cand}
			}
		}
		// apt-get leaves the packages already there as they are.
		if err := aptInstall(Packages...); err != nil {
			return err
		}
		if v := hostVersion(); !isVersion(v, V23) {
			return fmt.Errorf("dovecottest: after apt-get install, dovecot --version says %q, not Dovecot %s", v, V23)
		}
	}
	return ensureVmailHost()
}

// ensure24 makes the trixie tree at Root24 complete. The caller holds the
// lock.
//
// A tree that has Dovecot but lacks packages added to Packages
// since it was built (dovecot-sieve and dovecot-managesieved) is rebuilt
// beside it and swapped into place, rather than having the missing
// packages installed into it with dpkg: other processes (older checkouts,
// which do not wait for this upgrade) may be running Dovecot from the
// tree right now, and an in-place install changes the files under them.
// If trixie has moved on to a newer Dovecot point release since the tree
// was built, the new packages need a newer dovecot-core too, and
// upgrading that in place mixes versions under a running master (which
// refuses child processes of another version). An in-place install cut
// short also leaves a tree that looks complete but is not. A tree built
// beside is complete and consistent when it appears, it is exactly what a
// fresh machine gets, and the old tree stays where its running processes
// are until none is left (reapOldRoots24).
func ensure24() error {
	if err := ensureVmailHost(); err != nil {
		return err
	}
	root := Root24()
	if !hasFiles(root, append([]string{dovecotBin}, sieveFiles...)) {
		if err := buildRoot24(root); err != nil {
			return err
		}
	}
	reapOldRoots24(root)
	return ensureVmail24(root)
}

// ensureVmail24 adds the vmail group and user to the tree at root.
func ensureVmail24(root string) error {
	if err := ensureEntry(filepath.Join(root, "etc/group"), vmailName, fmt.Sprintf("%s:x:%d:\n", vmailName, vmailID)); err != nil {
		return err
	}
	line := fmt.Sprintf("%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n", vmailName, vmailID, vmailID)
	return ensureEntry(filepath.Join(root, "etc/passwd"), vmailName, line)
}

// buildRoot24 runs mmdebstrap into a temporary sibling of root and, once
// that is complete, moves any tree at root aside (to an ".old-" sibling
// that reapOldRoots24 removes when no process uses it any more) and
// renames the new one into place. The caller holds the lock.
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
	// Under the lock every temporary sibling is a leftover of an
	// interrupted build, or an old tree swapInto could not move aside
	// (which processes may still use).
	if old, _ := filepath.Glob(filepath.Join(parent, prefix+"*")); len(old) > 0 {
		for _, o := range old {
			if !treeInUse(o) {
				_ = os.RemoveAll(o)
			}
		}
	}
	tmp := filepath.Join(parent, fmt.Sprintf("%s%d", prefix, os.Getpid()))
	cmd := exec.Command("mmdebstrap", "--variant=essential",
		"--include="+strings.Join(Packages, ","), "trixie", tmp)
	cmd.Env = append(os.Environ(), sbinPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("dovecottest: mmdebstrap trixie: %w\n%s", err, tail(out, 4000))
	}
	if !hasFiles(tmp, append([]string{dovecotBin}, sieveFiles...)) {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("dovecottest: mmdebstrap produced no complete Dovecot in %s", tmp)
	}
	if err := ensureVmail24(tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	aside := filepath.Join(parent, fmt.Sprintf("%s%d-%d", oldRootPrefix(root), os.Getpid(), time.Now().UnixNano()))
	return swapInto(tmp, root, aside)
}

// swapInto puts the tree at tmp in place at root. A tree already at root
// is exchanged with it in one step (renameat2 with RENAME_EXCHANGE), so
// there is no moment without a tree at root, in which an instance
// starting would make root a bare folder for its mount point; the old
// tree, now at tmp, moves to aside, never deleted here: processes may be
// running Dovecot from it.
func swapInto(tmp, root, aside string) error {
	if _, err := os.Lstat(root); err != nil {
		if err := os.Rename(tmp, root); err != nil {
			_ = os.RemoveAll(tmp)
			return fmt.Errorf("dovecottest: rename %s into place: %w", tmp, err)
		}
		return nil
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, root, unix.RENAME_EXCHANGE); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("dovecottest: exchange %s with %s: %w", tmp, root, err)
	}
	if err := os.Rename(tmp, aside); err != nil {
		return fmt.Errorf("dovecottest: move the old tree %s aside: %w", tmp, err)
	}
	return nil
}

// oldRootPrefix is the name prefix of trees that buildRoot24 moved aside.
func oldRootPrefix(root string) string { return "." + filepath.Base(root) + ".old-" }

// hasOldRoots24 reports whether trees that buildRoot24 moved aside are
// left beside root.
func hasOldRoots24(root string) bool {
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(root), oldRootPrefix(root)+"*"))
	return len(old) > 0
}

// reapOldRoots24 removes the trees that buildRoot24 moved aside from which
// no process runs any more (no process has its root folder inside). A
// tree still in use stays for a later call. The caller holds the lock.
func reapOldRoots24(root string) {
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(root), oldRootPrefix(root)+"*"))
	for _, o := range old {
		if !treeInUse(o) {
			_ = os.RemoveAll(o)
		}
	}
}

// treeInUse reports whether a process has its root folder (a chroot) at
// or below dir. The kernel reports a folder under its current name, so
// processes chrooted into a tree before it was moved aside count.
//
// The kernel reports the path with symbolic links resolved, so dir is
// resolved too (Root24 may name its folder through a link). A process
// whose root cannot be read (without CAP_SYS_PTRACE, as in a container's
// default, root cannot read it for processes of other users, such as
// Dovecot's imap processes running as vmail) counts as using the tree:
// a tree kept longer costs disk, one removed under a running Dovecot
// breaks it.
func treeInUse(dir string) bool {
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	roots, _ := filepath.Glob("/proc/[0-9]*/root")
	for _, r := range roots {
		target, err := os.Readlink(r)
		if err != nil {
			if errors.Is(err, os.ErrPermission) {
				return true
			}
			continue // gone since the glob
		}
		if target == dir || strings.HasPrefix(target, dir+"/") {
			return true
		}
	}
	return false
}

// aptInstall installs packages, running apt-get update and retrying once
// if the first attempt fails. The packages' maintainer scripts start,
// stop or restart no service meanwhile (debian.NoServiceStarts):
// dovecot-core's would start the system's dovecot.service, and
// dovecot-pop3d's and the Sieve packages' would restart a Dovecot already
// running here. The caller holds the lock.
func aptInstall(pkgs ...string) error {
	allow, err := debian.NoServiceStarts()
	if err != nil {
		return fmt.Errorf("dovecottest: %w", err)
	}
	defer allow()
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", append([]string{"install", "-y"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", sbinPath)
		return runCommand(cmd)
	}
	if _, err := install(); err == nil {
		return nil
	}
	if err := aptUpdate(); err != nil {
		return err
	}
	if out, err := install(); err != nil {
		return fmt.Errorf("dovecottest: apt-get install %s: %w\n%s", strings.Join(pkgs, " "), err, tail(out, 4000))
	}
	return nil
}

// aptUpdate runs apt-get update.
func aptUpdate() error {
	update := exec.Command("apt-get", "update")
	update.Env = append(os.Environ(), sbinPath)
	if out, err := runCommand(update); err != nil {
		return fmt.Errorf("dovecottest: apt-get update: %w\n%s", err, tail(out, 2000))
	}
	return nil
}

// ensureVmailHost creates the vmail group and user on the host, with id
// 5000 when that is free (another id otherwise: the instances look the
// ids up).
func ensureVmailHost() error {
	if !hasEntry("/etc/group", vmailName) {
		out, err := exec.Command("/usr/sbin/groupadd", "-g", fmt.Sprint(vmailID), vmailName).CombinedOutput()
		if err != nil && !hasEntry("/etc/group", vmailName) {
			// 5000 may be another group's.
			if out2, err2 := exec.Command("/usr/sbin/groupadd", vmailName).CombinedOutput(); err2 != nil && !hasEntry("/etc/group", vmailName) {
				return fmt.Errorf("dovecottest: groupadd vmail: %w: %s%s", err2, out, out2)
			}
		}
	}
	if !hasEntry("/etc/passwd", vmailName) {
		args := []string{"-g", vmailName, "-d", "/nonexistent", "-M", "-s", "/usr/sbin/nologin", vmailName}
		out, err := exec.Command("/usr/sbin/useradd", append([]string{"-u", fmt.Sprint(vmailID)}, args...)...).CombinedOutput()
		if err != nil && !hasEntry("/etc/passwd", vmailName) {
			// 5000 may be another user's.
			if out2, err2 := exec.Command("/usr/sbin/useradd", args...).CombinedOutput(); err2 != nil && !hasEntry("/etc/passwd", vmailName) {
				return fmt.Errorf("dovecottest: useradd vmail: %w: %s%s", err2, out, out2)
			}
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
