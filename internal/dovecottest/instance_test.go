package dovecottest_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("dovecottest needs root: it installs Dovecot, creates the vmail user and uses unshare/chroot")
	}
}

func messages(t *testing.T, in *dovecottest.Instance, user, mailbox string) string {
	t.Helper()
	out, err := in.Doveadm(context.Background(), "mailbox", "status", "-u", user, "messages", mailbox)
	if err != nil {
		t.Fatalf("doveadm mailbox status: %v", err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "messages=") {
			return f
		}
	}
	t.Fatalf("doveadm mailbox status: no messages= in %q", out)
	return ""
}

func TestIMAPAppend(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			in := dovecottest.StartT(t, dovecottest.Options{
				Version: v, Name: "mail-a.test", Users: map[string]string{"u1": "pass"},
			})
			s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Append(ctx, "INBOX", `(\Seen)`, dovecottest.TestMessage("hello", "hi")); err != nil {
				t.Fatal(err)
			}
			if got := messages(t, in, "u1", "INBOX"); got != "messages=1" {
				t.Fatalf("mailbox status = %q, want messages=1", got)
			}
			if _, tagged, err := s.Cmd(ctx, "LOGOUT"); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("LOGOUT: %q %v", tagged, err)
			}
		})
	}
}
