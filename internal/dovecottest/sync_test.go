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
