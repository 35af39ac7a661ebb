//go:build unix

package doveadm

import (
	"os/exec"
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
