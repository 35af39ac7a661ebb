//go:build unix && !linux

package doveadm

import "syscall"

// parentDeath does nothing where there is no parent-death signal: a
// dsync outlives a crash of this process (KillRunning still ends it at a
// second stop signal).
func parentDeath(*syscall.SysProcAttr) {}
