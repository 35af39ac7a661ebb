//go:build !unix

package doveadm

import "os/exec"

// killGroup leaves cmd as exec.CommandContext made it where there are no
// process groups: its context's end kills doveadm's own process only.
func killGroup(*exec.Cmd) {}
