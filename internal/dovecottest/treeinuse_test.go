package dovecottest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// chrootedSleeper builds a static program into tree and starts it chrooted
// there; it is killed at the end of the test.
func chrootedSleeper(t *testing.T, tree string) { chrootedSleeperAs(t, tree, nil) }

func chrootedSleeperAs(t *testing.T, tree string, cred *syscall.Credential) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "main.go")
	if err := os.WriteFile(src, []byte("package main\nimport \"time\"\nfunc main() { time.Sleep(time.Minute) }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(tree, "sleeper"), src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	build.Dir = filepath.Dir(src)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command("/sleeper")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: tree, Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	time.Sleep(100 * time.Millisecond) // past the chroot and exec
}

// TestTreeInUse_ThroughASymlink: Root24 (DOVEWARDEN_DOVECOT24_ROOT) may
// name its folder through a symbolic link (a /var/cache that is a link to
// a larger disk); /proc/PID/root shows the resolved path, so the
// comparison must resolve the tree's path too, or a tree in use is reaped.
func TestTreeInUse_ThroughASymlink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "cache")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(link, ".dovecot-2.4-trixie.old-1-2")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	chrootedSleeper(t, tree)
	if !treeInUse(filepath.Join(real, ".dovecot-2.4-trixie.old-1-2")) {
		t.Fatal("not even the resolved path is seen in use")
	}
	if !treeInUse(tree) {
		t.Errorf("treeInUse(%s) = false while a process runs chrooted in it", tree)
	}
	// reapOldRoots24 would remove it.
	reapOldRoots24(filepath.Join(link, "dovecot-2.4-trixie"))
	if _, err := os.Stat(tree); err != nil {
		t.Errorf("reapOldRoots24 removed a tree in use: %v", err)
	}
}

// TestTreeInUse_UnreadableRoot: a root without CAP_SYS_PTRACE (a
// container's default) cannot read /proc/PID/root of a process of another
// user (Dovecot's imap and lmtp processes run as vmail) and treeInUse
// skips it: a tree that cannot be checked must count as in use. Run the
// test binary without the capability to see it:
//
//	go test -c -o dt.test ./internal/dovecottest
//	capsh --drop=cap_sys_ptrace -- -c './dt.test -test.run UnreadableRoot -test.v'
func TestTreeInUse_UnreadableRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	tree := filepath.Join(t.TempDir(), ".dovecot-2.4-trixie.old-1-2")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	chrootedSleeperAs(t, tree, &syscall.Credential{Uid: 65534, Gid: 65534})
	if !treeInUse(tree) {
		t.Errorf("treeInUse(%s) = false while a process of another user runs chrooted in it", tree)
	}
}

// TestTreeInUse_MountNamespace: the 2.4 instances run chrooted in a mount
// namespace of their own (unshare --mount); their root is still seen.
func TestTreeInUse_MountNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	tree := filepath.Join(t.TempDir(), ".dovecot-2.4-trixie.old-1-2")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	chrootedSleeper(t, tree) // builds the sleeper
	cmd := exec.Command("/usr/bin/unshare", "--mount", "--", "chroot", tree, "/sleeper")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	time.Sleep(200 * time.Millisecond)
	b, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", cmd.Process.Pid))
	t.Logf("root of the unshare'd process: %s", b)
	if string(b) != tree {
		t.Errorf("root %q, want %q", b, tree)
	}
	// Moved aside, as buildRoot24 does: seen under its new name.
	aside := tree + "-aside"
	if err := os.Rename(tree, aside); err != nil {
		t.Fatal(err)
	}
	if !treeInUse(aside) {
		t.Errorf("treeInUse(%s) = false after the rename", aside)
	}
}
