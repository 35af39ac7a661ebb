package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// replicationDeadline bounds how long the demo waits for a change to show
// on the other side; replication normally takes well under a second.
const replicationDeadline = 20 * time.Second

// show makes changes on one side and waits for them on the other, reading
// both Dovecot servers (never dovewarden's own report).
func (d *demo) show(ctx context.Context) error {
	d.say("\n0. The sweep at start replicates every user once (none was synced before).\n")
	for _, user := range []string{"alice", "bob"} {
		// No change to time it from: the sweep began when dovewarden did.
		if err := d.awaitSync(ctx, user, time.Time{}, time.Time{}); err != nil {
			return err
		}
	}

	d.say("\n1. New mail: LMTP delivers a message for alice to %s.\n", d.a.Name)
	start := time.Now()
	msg := dovecottest.TestMessage("Hello from the demo", "Delivered on "+d.a.Name+", replicated by dovewarden.")
	if err := dovecottest.DeliverLMTP(d.a.LMTPAddr, "sender@example.test", "alice@example.test", msg); err != nil {
		return fmt.Errorf("LMTP delivery: %w", err)
	}
	// Read the other side only once a dsync that started after the change
	// began succeeded (nothing else makes dovewarden sync alice now):
	// opening a user's INBOX on the other side before it exists there creates
	// an INBOX of its own, and Dovecot 2.3's dsync then fails with exit
	// code 2 ("Remote lost mailbox GUID") on every run (2.4 merges the
	// two).
	if err := d.awaitSync(ctx, "alice", start, start); err != nil {
		return err
	}
	if err := d.await(ctx, d.b, "alice", "INBOX", "messages=1", start); err != nil {
		return err
	}

	d.say("\n2. IMAP changes on %s: CREATE Projects, MOVE the message there, flag it.\n", d.a.Name)
	start = time.Now()
	s, err := dovecottest.LoginIMAP(ctx, d.a.IMAPAddr, "alice", "secret")
	if err != nil {
		return err
	}
	for _, cmd := range []string{"CREATE Projects", "SELECT INBOX", "MOVE 1 Projects", "SELECT Projects", `STORE 1 +FLAGS (\Flagged)`} {
		if _, tagged, err := s.Cmd(ctx, cmd); err != nil {
			s.Close()
			return fmt.Errorf("IMAP %s: %w (%s)", cmd, err, tagged)
		}
	}
	s.Close()
	if err := d.await(ctx, d.b, "alice", "Projects", "messages=1", start); err != nil {
		return err
	}
	if err := d.awaitFlag(ctx, d.b, "alice", "Projects", `\Flagged`, start); err != nil {
		return err
	}
	if err := d.await(ctx, d.b, "alice", "INBOX", "messages=0", start); err != nil {
		return err
	}

	d.say("\n3. Active-active: bob APPENDs a message on %s; it replicates the other way.\n", d.b.Name)
	start = time.Now()
	s, err = dovecottest.LoginIMAP(ctx, d.b.IMAPAddr, "bob", "secret")
	if err != nil {
		return err
	}
	_, err = s.Append(ctx, "INBOX", `(\Seen)`, dovecottest.TestMessage("Written on "+d.b.Name, "Active-active."))
	s.Close()
	if err != nil {
		return fmt.Errorf("IMAP APPEND: %w", err)
	}
	if err := d.awaitSync(ctx, "bob", start, start); err != nil {
		return err
	}
	if err := d.await(ctx, d.a, "bob", "INBOX", "messages=1", start); err != nil {
		return err
	}

	d.say("\n4. What dovewarden recorded for alice (GET /status/alice):\n")
	resp, err := d.get(ctx, "/status/alice")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	for _, k := range []string{"last_success", "last_success_host", "last_destination", "consecutive_failures", "failed"} {
		if v, ok := st[k]; ok {
			d.say("   %-22s %v\n", k, v)
		}
	}
	return nil
}

// awaitSync waits until dovewarden reports a successful dsync of user that
// started after changed (both clocks are this machine's; zero: any). The
// demo still checks the result on the servers themselves; this only keeps
// it from touching the other side early. since is for the report.
func (d *demo) awaitSync(ctx context.Context, user string, since, changed time.Time) error {
	return d.poll(ctx, "dovewarden replicated "+user, since, func() (bool, string) {
		resp, err := d.get(ctx, "/status/"+user)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var st struct {
			LastStart time.Time `json:"last_start"`
			LastError string    `json:"last_error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return false, err.Error()
		}
		return !st.LastStart.IsZero() && st.LastStart.After(changed), st.LastError
	})
}

// get asks dovewarden for path; Ctrl-C (ctx) ends the wait for its
// answer, so a dovewarden that does not answer cannot keep the demo from
// stopping.
func (d *demo) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+path, nil)
	if err != nil {
		return nil, err
	}
	return http.DefaultClient.Do(req)
}

// await polls `doveadm mailbox status` on in until it reports want.
func (d *demo) await(ctx context.Context, in *dovecottest.Instance, user, mailbox, want string, since time.Time) error {
	return d.poll(ctx, fmt.Sprintf("%s's %s on %s has %s", user, mailbox, in.Name, want), since, func() (bool, string) {
		out, err := in.Doveadm(ctx, "mailbox", "status", "-u", user, "messages", mailbox)
		got := strings.TrimSpace(string(out))
		return err == nil && got == mailbox+" "+want, got
	})
}

// awaitFlag polls `doveadm fetch` on in until a message of mailbox has flag.
func (d *demo) awaitFlag(ctx context.Context, in *dovecottest.Instance, user, mailbox, flag string, since time.Time) error {
	return d.poll(ctx, fmt.Sprintf("%s's message in %s on %s is %s", user, mailbox, in.Name, flag), since, func() (bool, string) {
		out, err := in.Doveadm(ctx, "fetch", "-u", user, "flags", "mailbox", mailbox, "all")
		got := strings.TrimSpace(string(out))
		return err == nil && strings.Contains(got, flag), got
	})
}

// poll calls check until it holds, then says what, with the time since
// since (none when zero).
func (d *demo) poll(ctx context.Context, what string, since time.Time, check func() (bool, string)) error {
	deadline := time.Now().Add(replicationDeadline)
	var last string
	for time.Now().Before(deadline) {
		ok, got := check()
		if ok && since.IsZero() {
			d.say("   ✓ %s\n", what)
			return nil
		}
		if ok {
			d.say("   ✓ %s (%d ms after the change)\n", what, time.Since(since).Milliseconds())
			return nil
		}
		last = got
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
	return fmt.Errorf("not replicated within %s: %s (last seen: %q)", replicationDeadline, what, last)
}
