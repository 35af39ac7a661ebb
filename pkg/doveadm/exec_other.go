//go:build !unix

package doveadm

import "os/exec"

// killGroup leaves cmd as exec.CommandContext made it where there are no
// process groups: its context's end kills doveadm's own process only.
func killGroup(*exec.Cmd) {}

// run runs cmd: without process groups, KillRunning has nothing to kill.
func run(cmd *exec.Cmd) error { return cmd.Run() }

// KillRunning does nothing without process groups.
func KillRunning() int { return 0 }
