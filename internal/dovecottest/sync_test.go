package dovecottest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestDoveadmHTTPSync syncs a user between two instances of the same
// version through the doveadm HTTP API, as the project's sync does.
func TestDoveadmHTTPSync(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			users := map[string]string{"u1": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
			s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i := 0; i < 3; i++ {
				if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage(fmt.Sprint("m", i), "x")); err != nil {
					t.Fatal(err)
				}
			}
			body := fmt.Sprintf(`[["sync",{"user":"u1","destination":["tcp:%s"],"state":""},"t1"]]`, b.DoveadmAddr)
			out, err := a.DoveadmHTTP(ctx, body)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(out), `[["doveadmResponse",[{"state":"`) || !strings.HasSuffix(strings.TrimSpace(string(out)), `"t1"]]`) {
				t.Fatalf("sync reply = %s", out)
			}
			if got := messages(t, b, "u1", "INBOX"); got != "messages=3" {
				t.Fatalf("destination %s, want messages=3", got)
			}
			// Wrong password: 401.
			pw := a.DoveadmPassword
			a.DoveadmPassword = "wrong"
			_, err = a.DoveadmHTTP(ctx, body)
			a.DoveadmPassword = pw
			if err == nil || !strings.Contains(err.Error(), "401") {
				t.Fatalf("bad credentials: err = %v, want 401", err)
			}
		})
	}
}

// TestDsyncIgnoresTheReplicasQuota measures what a replica with a smaller
// quota than the source does: dsync copies every message past the
// replica's limit and answers success, while the replica's own IMAP APPEND
// for the user is refused as over quota from then on (docs/operations.md,
// "Known Dovecot pitfalls").
func TestDsyncIgnoresTheReplicasQuota(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			users := map[string]string{"u1": "pass"}
			limit := "plugin {\n  quota_rule = *:messages=3\n}\n"
			if v == dovecottest.V24 {
				limit = "quota \"User quota\" {\n  quota_message_count = 3\n}\n"
			}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users, ExtraConfig: limit})
			s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i := 0; i < 6; i++ {
				if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage(fmt.Sprint("m", i), "x")); err != nil {
					t.Fatal(err)
				}
			}
			if _, code := httpDsync(ctx, t, a, b, "u1", ""); code != 0 {
				t.Fatalf("dsync: exit code %d", code)
			}
			if got := messages(t, b, "u1", "INBOX"); got != "messages=6" {
				t.Fatalf("replica %s after the dsync, want messages=6 (past its limit of 3)", got)
			}
			// The limit is in force on the replica for everything else.
			sb, err := dovecottest.LoginIMAP(ctx, b.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Close()
			_, err = sb.Append(ctx, "INBOX", "", dovecottest.TestMessage("on the replica", "x"))
			if err == nil || !strings.Contains(err.Error(), "OVERQUOTA") {
				t.Fatalf("APPEND on the replica over its quota: err = %v, want OVERQUOTA", err)
			}
		})
	}
}
