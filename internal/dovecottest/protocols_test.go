package dovecottest_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestProtocols exercises the LMTP, IMAP IDLE and POP3 helpers and Stop.
func TestProtocols(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Users: map[string]string{"u1": "pass"}})
			s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, tagged, err := s.Cmd(ctx, "SELECT INBOX"); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("SELECT: %q %v", tagged, err)
			}
			if err := s.IdleStart(ctx); err != nil {
				t.Fatal(err)
			}
			msg := dovecottest.TestMessage("over lmtp", "hello")
			if err := dovecottest.DeliverLMTP(in.LMTPAddr, "a@example.test", "u1@example.test", msg); err != nil {
				t.Fatal(err)
			}
			line, err := s.ReadLine(ctx)
			if err != nil || !strings.HasSuffix(line, "EXISTS") {
				t.Fatalf("during IDLE got %q, %v", line, err)
			}
			if _, tagged, err := s.IdleDone(ctx); err != nil || !dovecottest.IsOK(tagged) {
				t.Fatalf("DONE: %q %v", tagged, err)
			}
			untagged, _, err := s.Cmd(ctx, "FETCH 1 (BODY.PEEK[])")
			if err != nil || len(untagged) == 0 || !strings.Contains(untagged[0], "Subject: over lmtp") {
				t.Fatalf("FETCH: %q %v", untagged, err)
			}
			s.Close()

			p, err := dovecottest.LoginPOP3(ctx, in.POP3Addr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			status, lines, err := p.CmdMulti(ctx, "RETR 1")
			if err != nil || !strings.HasPrefix(status, "+OK") || !strings.Contains(strings.Join(lines, "\n"), "hello") {
				t.Fatalf("RETR: %q %q %v", status, lines, err)
			}
			for _, c := range []string{"DELE 1", "QUIT"} {
				if r, err := p.Cmd(ctx, c); err != nil || !strings.HasPrefix(r, "+OK") {
					t.Fatalf("%s: %q %v", c, r, err)
				}
			}
			if got := messages(t, in, "u1", "INBOX"); got != "messages=0" {
				t.Fatalf("after POP3 DELE: %s", got)
			}

			if err := in.Stop(); err != nil {
				t.Fatal(err)
			}
			if !in.Exited() {
				t.Fatal("master still running after Stop")
			}
			if dovecottest.GroupAlive(in.PID) {
				t.Fatalf("process group %d still has running processes", in.PID)
			}
		})
	}
}

// TestInvalidConfig checks that doveconf's complaint comes back from Start.
func TestInvalidConfig(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		in, err := dovecottest.Start(context.Background(), dovecottest.Options{Version: v, ExtraConfig: "no_such_setting_xyz = 1"})
		if err == nil {
			in.Stop()
			t.Fatalf("%s: Start accepted an invalid config", v)
		}
		if !strings.Contains(err.Error(), "no_such_setting_xyz") {
			t.Errorf("%s: error lacks doveconf's text: %v", v, err)
		}
	}
}

// TestStart_NoNamespaces: without CAP_SYS_ADMIN (a container that is not
// privileged), Start says that it cannot create namespaces, not that the
// config is invalid. The test runs itself again with CAP_SYS_ADMIN
// dropped from the bounding set (setpriv).
func TestStart_NoNamespaces(t *testing.T) {
	needRoot(t)
	if os.Getenv("DOVECOTTEST_NO_SYS_ADMIN") == "1" {
		for _, v := range []string{dovecottest.V23, dovecottest.V24} {
			if err := dovecottest.CheckNamespaces(v); err == nil {
				t.Fatalf("CheckNamespaces(%s) without CAP_SYS_ADMIN succeeded", v)
			}
			in, err := dovecottest.Start(context.Background(), dovecottest.Options{Version: v})
			if err == nil {
				in.Stop()
				t.Fatalf("%s: Start without CAP_SYS_ADMIN succeeded", v)
			}
			if !strings.Contains(err.Error(), "CAP_SYS_ADMIN") || strings.Contains(err.Error(), "invalid config") {
				t.Errorf("%s: Start without CAP_SYS_ADMIN: %v", v, err)
			}
			t.Logf("%s: %v", v, err)
		}
		return
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		if err := dovecottest.Ensure(v); err != nil {
			t.Fatal(err)
		}
		if err := dovecottest.CheckNamespaces(v); err != nil {
			t.Fatalf("CheckNamespaces(%s) as root: %v", v, err)
		}
	}
	cmd := exec.Command("setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin",
		os.Args[0], "-test.run", "^TestStart_NoNamespaces$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "DOVECOTTEST_NO_SYS_ADMIN=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("without CAP_SYS_ADMIN: %v\n%s", err, out)
	}
}
