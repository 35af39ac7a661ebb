package dovecottest_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestDsyncFromAnOlderState measures what a dsync does when it is given a
// state older than the last dsync that succeeded, as sync gives it after
// a dsync that failed partway (it keeps the state from before) and as a
// Redis restored from an older snapshot does, and what a full dsync
// without a state does, as after the state is lost: mail expunged on
// either side since then, the primary's and the replica's, must not come
// back, nor a flag taken off, nor a mailbox deleted.
func TestDsyncFromAnOlderState(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		for _, last := range []string{"older state", "no state, full"} {
			t.Run(v+"/"+last, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				users := map[string]string{"u1": "pass"}
				a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
				b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
				sa, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
				if err != nil {
					t.Fatal(err)
				}
				defer sa.Close()
				appendTo := func(subjects ...string) {
					t.Helper()
					for _, s := range subjects {
						if _, err := sa.Append(ctx, "INBOX", "", dovecottest.TestMessage(s, "x")); err != nil {
							t.Fatal(err)
						}
					}
				}
				appendTo("m1")
				// The mailboxes the configuration makes (Sent, Trash,
				// ...), and then two more.
				base := mailboxes(t, a, "u1")
				with := func(names ...string) []string {
					return slices.Sorted(slices.Values(append(slices.Clone(base), names...)))
				}
				older, code := httpDsync(ctx, t, a, b, "u1", "")
				if code != 0 {
					t.Fatalf("first dsync: exit code %d", code)
				}
				appendTo("m2", "m3", "m4")
				flags(ctx, t, b, "add", "m1")
				mailbox(ctx, t, a, "create", "Old")
				mailbox(ctx, t, b, "create", "Kept")
				if _, code := httpDsync(ctx, t, a, b, "u1", older); code != 0 {
					t.Fatalf("second dsync: exit code %d", code)
				}
				if got := subjects(t, b, "u1", "INBOX"); !slices.Equal(got, []string{"m1", "m2", "m3", "m4"}) {
					t.Fatalf("replica after the second dsync: %q", got)
				}
				if got := mailboxes(t, b, "u1"); !slices.Equal(got, with("Kept", "Old")) {
					t.Fatalf("replica's mailboxes after the second dsync: %q", got)
				}
				if got := subjects(t, a, "u1", "INBOX", "FLAGGED"); !slices.Equal(got, []string{"m1"}) {
					t.Fatalf("flagged on the primary after the second dsync: %q", got)
				}
				// Since the second dsync: m2 expunged on the primary, m3
				// on the replica, m5 new on the primary, and m1's flag,
				// set on the replica before it, taken off on the
				// primary; the mailbox Old, made on the primary and
				// copied by the second dsync, deleted there.
				expunge(ctx, t, a, "m2")
				expunge(ctx, t, b, "m3")
				appendTo("m5")
				flags(ctx, t, a, "remove", "m1")
				mailbox(ctx, t, a, "delete", "Old")
				var state string
				var full bool
				if last == "older state" {
					state = older
				} else {
					full = true
				}
				if _, code := httpDsyncFull(ctx, t, a, b, "u1", state, full); code != 0 {
					t.Fatalf("dsync from %s: exit code %d", last, code)
				}
				want := []string{"m1", "m4", "m5"}
				for _, in := range []*dovecottest.Instance{a, b} {
					if got := subjects(t, in, "u1", "INBOX"); !slices.Equal(got, want) {
						t.Errorf("%s after a dsync from %s: %q, want %q", in.Name, last, got, want)
					}
					if got := subjects(t, in, "u1", "INBOX", "FLAGGED"); len(got) != 0 {
						t.Errorf("%s after a dsync from %s: %q flagged, want none", in.Name, last, got)
					}
					if got := mailboxes(t, in, "u1"); !slices.Equal(got, with("Kept")) {
						t.Errorf("%s after a dsync from %s: mailboxes %q, want %q", in.Name, last, got, with("Kept"))
					}
				}
			})
		}
	}
}

// subjects lists the subjects of the messages in a user's mailbox that
// match the doveadm search query (all of them without one), in UID order.
func subjects(t *testing.T, in *dovecottest.Instance, user, mailbox string, query ...string) []string {
	t.Helper()
	args := append([]string{"-f", "tab", "fetch", "-u", user, "hdr.subject", "mailbox", mailbox}, query...)
	out, err := in.Doveadm(context.Background(), args...)
	if err != nil {
		t.Fatalf("doveadm fetch: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got []string
	for _, l := range lines[1:] { // the first line is the header
		got = append(got, strings.TrimSpace(l))
	}
	return got
}

// expunge expunges the message with subject from user u1's INBOX on in,
// through doveadm.
func expunge(ctx context.Context, t *testing.T, in *dovecottest.Instance, subject string) {
	t.Helper()
	if out, err := in.Doveadm(ctx, "expunge", "-u", "u1", "mailbox", "INBOX", "header", "Subject", subject); err != nil {
		t.Fatalf("doveadm expunge %s on %s: %v: %s", subject, in.Name, err, out)
	}
}

// flags adds \Flagged to, or removes it from, the message with subject in
// user u1's INBOX on in.
func flags(ctx context.Context, t *testing.T, in *dovecottest.Instance, op, subject string) {
	t.Helper()
	if out, err := in.Doveadm(ctx, "flags", op, "-u", "u1", `\Flagged`, "mailbox", "INBOX", "header", "Subject", subject); err != nil {
		t.Fatalf("doveadm flags %s %s on %s: %v: %s", op, subject, in.Name, err, out)
	}
}

// mailbox runs doveadm mailbox create or delete for user u1 on in.
func mailbox(ctx context.Context, t *testing.T, in *dovecottest.Instance, op, name string) {
	t.Helper()
	if out, err := in.Doveadm(ctx, "mailbox", op, "-u", "u1", name); err != nil {
		t.Fatalf("doveadm mailbox %s %s on %s: %v: %s", op, name, in.Name, err, out)
	}
}

// mailboxes lists a user's mailboxes, sorted.
func mailboxes(t *testing.T, in *dovecottest.Instance, user string) []string {
	t.Helper()
	out, err := in.Doveadm(context.Background(), "mailbox", "list", "-u", user)
	if err != nil {
		t.Fatalf("doveadm mailbox list: %v: %s", err, out)
	}
	got := strings.Fields(string(out))
	slices.Sort(got)
	return got
}
