package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// oddUsers are usernames real mail systems have: punctuation, UTF-8, the
// braces of the Redis keys' hash tags, a space inside. Dovecot takes them
// with auth_username_chars empty (its default allows letters, digits and
// ".-_@" only).
var oddUsers = []string{"a+tag", "first.last", "a-b_c", "per%cent", "a&b=c", "jürgen", "x{y}z", "}{", "john doe"}

// lmtpUsers are those of oddUsers an LMTP recipient address can name
// unquoted: Dovecot takes "+" as the detail delimiter, and 2.3's LMTP
// refuses UTF-8 without SMTPUTF8.
var lmtpUsers = []string{"first.last", "a-b_c", "per%cent", "a&b=c", "x{y}z"}

// upperASCII is user as a client may type it: Dovecot's
// auth_username_format (%Ln, %{user | username | lower}) lower-cases A to
// Z only, so "JüRGEN" logs in as jürgen and "JÜRGEN" is another user.
func upperASCII(user string) string {
	b := []byte(user)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// TestOddUsernames: each odd name's change, made by a client that logs in
// with the name in upper case, reaches the replica; `dovewarden status`
// shows its record under either spelling, `dovewarden replicate` with
// either spelling runs a full sync of it, and in local mode an excluded
// name given in upper case in the file is held back. No event is refused
// on the way (the names cross ingest, the broker's ce-subject header and
// Redis keys), and no two dsyncs of one user overlap (checked at the end
// by newSystem).
func TestOddUsernames(t *testing.T) {
	const held = "x{held}"
	eachCase(t, []pairCase{{shapeLocal, v24, v24}, {shapeSplit, v23, v23}}, func(t *testing.T, c pairCase) {
		users := append(append([]string{}, oddUsers...), held)
		cfg := c.config(users...)
		cfg.dovecot = "\nauth_username_chars =\n"
		file := filepath.Join(t.TempDir(), "excluded")
		if err := os.WriteFile(file, []byte(upperASCII(held)+"  # on leave\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if c.shape == shapeLocal {
			cfg.syncFlags = []string{"--excluded-users", file}
		}
		s := newSystem(t, cfg)
		base := s.ingestBase
		if c.shape == shapeSplit {
			base = s.syncBase
		}

		for _, u := range users {
			c := s.imap(s.a, upperASCII(u))
			if _, err := c.Append(s.ctx, "INBOX", "", message("odd", "new", "x")); err != nil {
				t.Fatalf("APPEND as %q: %v", upperASCII(u), err)
			}
		}
		// LMTP deliveries, whose events name the recipient as the MTA
		// spelled it on Dovecot 2.3 (2.4 names the user Dovecot found).
		for _, u := range lmtpUsers {
			to := upperASCII(u) + "@Example.TEST"
			if err := dovecottest.DeliverLMTP(s.a.LMTPAddr, "sender@example.test", to, message("odd", "lmtp", "x")); err != nil {
				t.Fatalf("LMTP to %q: %v", to, err)
			}
		}
		s.awaitConverged(oddUsers...)

		// The records, under either spelling.
		status := func(spelling string) state.UserStatus {
			t.Helper()
			args := []string{"status", "--json", "--username-format", "%Ln"}
			if c.shape == shapeLocal {
				args = append(args, "--url", s.ingestBase)
			} else {
				args = append(args, "--redis-url", s.redisURL())
			}
			out, err := exec.CommandContext(s.ctx, dovewardenBin, append(args, "--", spelling)...).CombinedOutput()
			var recs []state.UserStatus
			if err == nil {
				err = json.Unmarshal(out, &recs)
			}
			if err != nil || len(recs) != 1 {
				t.Fatalf("dovewarden status %q: %v %d records\n%s", spelling, err, len(recs), out)
			}
			return recs[0]
		}
		for _, u := range oddUsers {
			for _, spelling := range []string{u, upperASCII(u)} {
				if r := status(spelling); r.User != u || r.LastSuccess.IsZero() || r.Failed {
					t.Errorf("dovewarden status %q: %+v", spelling, r)
				}
			}
		}

		// An administrator's full sync, asked with the other spelling.
		asked := time.Now().Add(-time.Millisecond)
		args := []string{"replicate", "--broker-url", s.brokerURL, "--full", "--username-format", "%Ln", "--"}
		for _, u := range oddUsers {
			args = append(args, upperASCII(u))
		}
		if out, err := exec.CommandContext(s.ctx, dovewardenBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("dovewarden replicate: %v\n%s", err, out)
		}
		for _, u := range oddUsers {
			err := poll(s.ctx, convergeLimit, 50*time.Millisecond, func() error {
				if r := status(u); r.LastFullStart.Before(asked) {
					return errNotYet(fmt.Sprintf("a full sync of %q after %s: %+v", u, asked, r))
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}

		if c.shape == shapeLocal {
			if r := status(held); !r.Excluded || !r.LastSuccess.IsZero() {
				t.Errorf("the excluded user: %+v", r)
			}
			if _, b := s.snapshots(held); b.has("<new.odd@") {
				t.Errorf("the excluded user's mail reached B:\n%s", b)
			}
		} else {
			s.awaitConverged(held)
		}
		// Every dsync ran under the name Dovecot uses, so under its one
		// lock: a second spelling would have a lock of its own.
		known := map[string]bool{}
		for _, u := range users {
			known[u] = true
		}
		for _, typ := range []string{contract.TypeReplicationSucceeded, contract.TypeReplicationFailed} {
			for _, r := range s.events.results(typ) {
				if !known[r.User] {
					t.Errorf("%s for %q, a spelling of no user's own", typ, r.User)
				}
			}
		}
		for _, m := range []string{"dovewarden_ingest_requests_rejected_total", "dovewarden_sync_events_rejected_total"} {
			b := s.ingestBase
			if strings.HasPrefix(m, "dovewarden_sync") {
				b = base
			}
			if n := metric(t, b, m); n != 0 {
				t.Errorf("%s = %v", m, n)
			}
		}
		// A sweep lists every name from the userdb, and refuses none.
		listed := metric(t, base, "dovewarden_sweep_users_listed_total")
		completed := metric(t, base, "dovewarden_sweep_finished_total", `outcome="completed"`)
		s.requestSweep()
		swept := func() error {
			if metric(t, base, "dovewarden_sweep_finished_total", `outcome="completed"`) <= completed {
				return errNotYet("a completed sweep")
			}
			return nil
		}
		if err := poll(s.ctx, convergeLimit, 50*time.Millisecond, swept); err != nil {
			t.Fatal(err)
		}
		if n := metric(t, base, "dovewarden_sweep_users_listed_total") - listed; n < float64(len(users)) {
			t.Errorf("the sweep listed %v names; want at least %d", n, len(users))
		}
		if n := metric(t, base, "dovewarden_sweep_users_skipped_total", `reason="bad_user"`); n != 0 {
			t.Errorf("the sweep skipped %v listed names", n)
		}
	})
}
