//go:build unix

package doveadm

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// killGroup runs cmd in a process group of its own, and has its context's
// end kill the whole group (command).
func killGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's id is the wrapper's pid (Setpgid).
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
			return cmd.Process.Kill()
		}
		return nil
	}
}

// dsyncs are the process groups of the dsyncs running now (run).
var dsyncs = struct {
	sync.Mutex
	groups map[int]bool
}{groups: map[int]bool{}}

// run runs a dsync's cmd (from command) and waits for it. Its group is
// known to KillRunning meanwhile, and on Linux the process gets SIGKILL
// if this one dies first (a crash, the out-of-memory killer): left
// running, it would run beside the next start's dsync of the same user,
// whose lock died with the embedded Redis or expired. The kernel sends
// that signal when the thread that started the process ends, not the
// process, and Go ends a thread that a goroutine leaves locked to it: so
// the thread is held until the process has ended.
func run(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	parentDeath(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	dsyncs.Lock()
	dsyncs.groups[pid] = true
	dsyncs.Unlock()
	defer func() {
		dsyncs.Lock()
		delete(dsyncs.groups, pid)
		dsyncs.Unlock()
	}()
	return cmd.Wait()
}

// KillRunning kills the process group of every dsync running now, for a
// process about to end at once (a second stop signal): a wrapper's doveadm
// child gets no parent-death signal, and the group's kill reaches it. It
// returns how many groups it killed.
func KillRunning() int {
	dsyncs.Lock()
	defer dsyncs.Unlock()
	n := 0
	for pid := range dsyncs.groups {
		if syscall.Kill(-pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}
