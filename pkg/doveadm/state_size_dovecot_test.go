package doveadm_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// TestIntegrationDovecot_LargeStates measures how large a dsync state
// grows and what real Dovecot does with one too large, and that both
// transports then replicate the user by a full sync without it:
//   - 620 mailboxes make a state of some 36 KB (about 60 bytes each);
//   - Dovecot 2.4's doveadm HTTP API refuses it (400 "JSON parse error:
//     Excessive string size (> 32768)"), before this a failure of every
//     later dsync of the user, taken for a configuration problem; 2.3
//     takes it, and refuses a request over 1 MiB (413);
//   - doveadm-exec cannot pass an argument over 32 pages (E2BIG);
//   - from some 4 MiB, both versions often reset the connection while
//     the request is sent, rather than answer 413 or 400: a state over
//     1 MiB, which none takes, is never offered.
//
// A state padded past a limit stands for a user with more mailboxes.
func TestIntegrationDovecot_LargeStates(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			users := map[string]string{"u1": "pass"}
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
			waitListening(t, a.DoveadmHTTPURL)
			args := []string{"mailbox", "create", "-u", "u1"}
			for i := range 620 {
				args = append(args, fmt.Sprintf("F%04d", i))
			}
			if out, err := a.Doveadm(ctx, args...); err != nil {
				t.Fatalf("create 620 mailboxes: %v: %s", err, out)
			}
			bin, err := a.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword,
				Config: a.ConfigPath, Destination: b.Destination}
			overHTTP, exe := doveadm.NewHTTP(nil, time.Minute), doveadm.NewExec(bin, time.Minute)
			sync := func(tr doveadm.Transport, state string) doveadm.SyncResult {
				t.Helper()
				req := doveadm.SyncRequest{User: "u1", Destination: b.Destination, State: state, Full: state == "", LockTimeout: 10 * time.Second}
				res, err := tr.Sync(ctx, ep, req)
				// A first sync of many new mailboxes may answer exit code 2
				// (changed during the sync), which the replicator reruns.
				for i := 0; i < 3 && doveadm.ExitCodeOf(err) == 2; i++ {
					res, err = tr.Sync(ctx, ep, req)
				}
				if err != nil || res.State == "" {
					t.Fatalf("sync from a state of %d bytes: %+v, %v", len(state), res, err)
				}
				return res
			}
			state := sync(overHTTP, "").State
			t.Logf("the state of 620 mailboxes: %d bytes", len(state))
			if len(state) <= 32768 {
				t.Fatalf("the state of 620 mailboxes is %d bytes, want over 32 KiB", len(state))
			}
			if out, err := a.LDA(ctx, "u1", dovecottest.TestMessage("after the first sync", "x")); err != nil {
				t.Fatalf("deliver: %v: %s", err, out)
			}
			res := sync(overHTTP, state)
			if want := map[string]int{dovecottest.V23: 0, dovecottest.V24: len(state)}[v]; res.StateLeftOut != want {
				t.Errorf("doveadm-http from the real state: %d bytes left out, want %d", res.StateLeftOut, want)
			}
			if got := messages(t, b, "u1"); got != "messages=1" {
				t.Errorf("replica %s after doveadm-http, want messages=1", got)
			}
			// Past 2.3's 1 MiB request (a state of 1 MiB and the rest of
			// the request) and Linux's argument bound.
			for _, tc := range []struct {
				name string
				tr   doveadm.Transport
				size int
			}{{"doveadm-http", overHTTP, 1 << 20}, {"doveadm-exec", exe, 3 << 20}} {
				padded := res.State + strings.Repeat("A", tc.size-len(res.State))
				if got := sync(tc.tr, padded); got.StateLeftOut != len(padded) {
					t.Errorf("%s from a state of %d bytes: %d bytes left out, want all", tc.name, len(padded), got.StateLeftOut)
				}
			}
			// From some 4 MiB both versions often reset the connection
			// while the request is being sent, instead of answering; such
			// a state is left out before it is offered, also by a
			// transport that has not seen a refusal yet. Leaving it out
			// is the transport's own decision, the same every time: one
			// try shows it, where each more is a full dsync of 620 mailboxes.
			huge := res.State + strings.Repeat("A", 20<<20-len(res.State))
			if got := sync(doveadm.NewHTTP(nil, time.Minute), huge); got.StateLeftOut != len(huge) {
				t.Errorf("doveadm-http from a state of 20 MiB: %d bytes left out, want all", got.StateLeftOut)
			}
		})
	}
}
