package dovecottest_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestReuseProcesses: with Options.ReuseProcesses a second IMAP session
// after the first one ended is served by the same imap process; without
// it, as Dovecot's default, by a new one.
func TestReuseProcesses(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		for _, reuse := range []bool{false, true} {
			t.Run(v+"/"+map[bool]string{false: "default", true: "reuse"}[reuse], func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				in := dovecottest.StartT(t, dovecottest.Options{
					Version: v, Users: map[string]string{"u1": "pass"}, ReuseProcesses: reuse,
				})
				pid := func() string {
					s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
					if err != nil {
						t.Fatal(err)
					}
					defer s.Close()
					out, err := in.Doveadm(ctx, "who", "-1")
					if err != nil {
						t.Fatalf("doveadm who: %v", err)
					}
					m := regexp.MustCompile(`\bimap\s+\(?(\d+)`).FindSubmatch(out)
					if m == nil {
						t.Fatalf("no imap process in doveadm who -1: %q", out)
					}
					if _, tagged, err := s.Cmd(ctx, "LOGOUT"); err != nil || !dovecottest.IsOK(tagged) {
						t.Fatalf("LOGOUT: %q %v", tagged, err)
					}
					return string(m[1])
				}
				first := pid()
				// The process takes a new connection once it has ended
				// the session, which is when the session leaves who's list.
				deadline := time.Now().Add(10 * time.Second)
				for {
					out, err := in.Doveadm(ctx, "who", "-1")
					if err == nil && !regexp.MustCompile(`\bimap\b`).Match(out) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("the first session is still in doveadm who -1 after 10 s: %q %v", out, err)
					}
					time.Sleep(20 * time.Millisecond)
				}
				second := pid()
				if reuse != (first == second) {
					t.Errorf("ReuseProcesses %v: the sessions' imap processes are %s and %s", reuse, first, second)
				}
			})
		}
	}
}
