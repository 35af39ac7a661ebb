package dovecottest_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestHaltRestart takes an instance down and brings it back on the same
// folder and ports with its mail intact, as the e2e suite's "replica down
// for a while" needs.
func TestHaltRestart(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-r.test", Users: map[string]string{"u1": "pass"}})
			s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage("kept", "across a restart")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			ports, oldPID := in.Ports, in.PID

			if err := in.Halt(); err != nil {
				t.Fatalf("Halt: %v", err)
			}
			if !in.Exited() || dovecottest.GroupAlive(oldPID) {
				t.Fatal("Dovecot still running after Halt")
			}
			if c, err := net.DialTimeout("tcp", in.IMAPAddr, time.Second); err == nil {
				c.Close()
				t.Fatal("IMAP port accepts after Halt")
			}
			if err := in.Halt(); err != nil {
				t.Fatalf("second Halt: %v", err)
			}

			if err := in.Restart(ctx); err != nil {
				t.Fatalf("Restart: %v", err)
			}
			if in.Ports != ports || in.PID == oldPID || in.Exited() {
				t.Fatalf("after Restart: ports %+v (were %+v), PID %d (was %d), exited %v", in.Ports, ports, in.PID, oldPID, in.Exited())
			}
			if got := messages(t, in, "u1", "INBOX"); got != "messages=1" {
				t.Fatalf("after Restart INBOX has %s, want messages=1", got)
			}
			// Restart of a running instance halts it first.
			if err := in.Restart(ctx); err != nil {
				t.Fatalf("Restart while running: %v", err)
			}
			if err := in.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if err := in.Restart(ctx); err == nil {
				t.Fatal("Restart after Stop succeeded")
			}
		})
	}
}
