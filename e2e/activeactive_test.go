package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// imapDo runs IMAP commands in order and returns the first failure; safe
// to call from any goroutine (the test's own helpers are not).
func imapDo(ctx context.Context, c *dovecottest.IMAPSession, cmds ...string) error {
	for _, cmd := range cmds {
		if _, tagged, err := c.Cmd(ctx, cmd); err != nil || !dovecottest.IsOK(tagged) {
			return fmt.Errorf("IMAP %s: %v %s", cmd, err, tagged)
		}
	}
	return nil
}

// sideChanges makes one side's share of the active-active changes for
// user on in: new mail in INBOX, a folder of its own with a message,
// an annotation and a keyword on the seed message, and an LMTP delivery.
func sideChanges(ctx context.Context, in *dovecottest.Instance, user, side string) error {
	c, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, user, password)
	if err != nil {
		return err
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		if _, err := c.Append(ctx, "INBOX", "", message(user, fmt.Sprintf("%s%d", side, i), "Written on "+in.Name)); err != nil {
			return err
		}
	}
	folder := "From-" + side
	// Dovecot 2.3 may answer CREATE with NO [ALREADYEXISTS] when a dsync
	// of the user runs at that moment, though the folder is created (the
	// final state is checked below): take it as done.
	if _, tagged, err := c.Cmd(ctx, "CREATE "+folder); err != nil || !(dovecottest.IsOK(tagged) || strings.Contains(tagged, "[ALREADYEXISTS]")) {
		return fmt.Errorf("IMAP CREATE %s: %v %s", folder, err, tagged)
	}
	if err := imapDo(ctx, c, "SUBSCRIBE "+folder); err != nil {
		return err
	}
	if _, err := c.Append(ctx, folder, `(\Seen)`, message(user, "folder-"+side, "Filed on "+in.Name)); err != nil {
		return err
	}
	err = imapDo(ctx, c, fmt.Sprintf(`SETMETADATA INBOX (/private/vendor/e2e/%s "set on %s")`, side, in.Name),
		"SELECT INBOX", fmt.Sprintf(`UID STORE 1 +FLAGS ($From-%s)`, side))
	if err != nil {
		return err
	}
	return dovecottest.DeliverLMTP(in.LMTPAddr, "sender@example.test", user+"@example.test", message(user, "lmtp-"+side, "Delivered to "+in.Name))
}

// TestActiveActive is scenario 2: both servers take changes for the same
// users at the same time; with the host map each change syncs from where
// it was seen, and the per-user lock keeps A->B and B->A apart. Both
// servers must end in one state that holds every change of both sides.
func TestActiveActive(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v23, v23}, {shapeSplit, v24, v24}, {shapeSplit, v23, v24}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2", "u3"}
		cfg := c.config(users...)
		// The one scenario on servers with Dovecot's own default of a
		// process per connection for every service (the others reuse
		// the IMAP, POP3 and ManageSieve ones, to save CPU), as on most
		// installations.
		cfg.processPerConnection = true
		s := newSystem(t, cfg)
		var wg sync.WaitGroup
		errs := make(chan error, 2*len(users))
		for _, u := range users {
			for side, in := range map[string]*dovecottest.Instance{"a": s.a, "b": s.b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := sideChanges(s.ctx, in, u, side); err != nil {
						errs <- fmt.Errorf("%s on %s: %w", u, in.Name, err)
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for u, snap := range s.awaitConverged(users...) {
			var missing []string
			for _, side := range []string{"a", "b"} {
				want := [][]string{
					{`mailbox "From-` + side + `"`},
					{`subscribed "From-` + side + `"`},
					{`message "From-` + side + `"`, "<folder-" + side + "." + u + "@", `\Seen`},
					{`message "INBOX"`, "<lmtp-" + side + "." + u + "@"},
					{`metadata "INBOX" /private/vendor/e2e/` + side + `=`},
					// dsync merges keyword changes of both sides.
					{"<seed." + u + "@", "$From-" + side},
				}
				for i := 0; i < 5; i++ {
					want = append(want, []string{`message "INBOX"`, fmt.Sprintf("<%s%d.%s@", side, i, u)})
				}
				for _, w := range want {
					if !snap.has(w...) {
						missing = append(missing, strings.Join(w, " "))
					}
				}
			}
			if len(missing) > 0 {
				t.Errorf("%s converged without some changes:\n  %s\n%s", u, strings.Join(missing, "\n  "), snap)
			}
		}
	})
}
