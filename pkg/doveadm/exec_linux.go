package doveadm

import "syscall"

// parentDeath has the process get SIGKILL when the thread that starts it
// ends (run).
func parentDeath(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
