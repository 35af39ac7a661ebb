package doveadm_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// running returns the PIDs of processes whose command line holds s.
func running(s string) []string {
	var pids []string
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

// doveadm-exec's timeout stops the whole doveadm, also when --doveadm-bin
// is a wrapper (a script, sudo) that runs doveadm as its child rather than
// in its place: killing the wrapper alone left doveadm running its dsync
// without the per-user lock, next to the retry, and the call waited on
// for the child's pipes (cmd.WaitDelay, 5 s) past the timeout. Real
// Dovecot 2.3 and 2.4, a destination that accepts and never answers.
func TestIntegrationDovecot_ExecTimeoutStopsDoveadm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: map[string]string{"u1": "pass"}})
			dir := t.TempDir()
			bin, err := in.DoveadmScript(dir)
			if err != nil {
				t.Fatal(err)
			}
			wrapper := filepath.Join(dir, "doveadm-wrapper")
			if err := os.WriteFile(wrapper, []byte("#!/bin/sh\n'"+bin+"' \"$@\"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			dest := "tcp:" + redistest.Silent(t) // a destination that hangs
			const timeout = 2 * time.Second
			start := time.Now()
			_, err = doveadm.NewExec(wrapper, timeout).Sync(context.Background(), doveadm.Endpoint{Config: in.ConfigPath},
				doveadm.SyncRequest{User: "u1", Destination: dest, Full: true})
			took := time.Since(start)
			if r := doveadm.Decide(err); r.Class != "transport" || !r.Retryable {
				t.Errorf("dsync past the timeout: %v, rule %v; want a retried transport failure", err, r)
			}
			if took > timeout+2*time.Second {
				t.Errorf("the call took %v with a timeout of %v", took.Round(time.Millisecond), timeout)
			}
			// The doveadm that ran the dsync is gone (a moment for the
			// kernel to reap it).
			var left []string
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if left = running(dest); len(left) == 0 {
					break
				}
			}
			if len(left) > 0 {
				t.Errorf("doveadm still running its dsync after the timeout: pids %v", left)
			}
		})
	}
}
