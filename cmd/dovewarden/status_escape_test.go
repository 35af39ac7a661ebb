package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestStatus_ErrorsCannotDriveTheTerminal: a user's last error holds
// what doveadm wrote to its standard error (doveadm-exec), which names
// mailboxes the user chose, or what a doveadm server answered. Printed as
// text, its control characters (ESC starts a terminal's escape sequences:
// a new window title, a cleared screen, a forged line) are shown escaped,
// never sent to the administrator's terminal.
func TestStatus_ErrorsCannotDriveTheTerminal(t *testing.T) {
	now := time.Now()
	hostile := "dsync(u1): Error: Mailbox \x1b]0;pwned\x07\x1b[2J\x1b[1;1H\u009b31mfake\x7f line \x9b2J"
	s := state.UserStatus{User: "u1", LastFailure: now, LastError: hostile, LastFailureClass: "tempfail", FailedSince: now}
	var out bytes.Buffer
	if err := printUser(&out, s, now); err != nil {
		t.Fatal(err)
	}
	if err := printOverview(&out, overview{FailedUsers: []state.UserStatus{s}}, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"\x1b", "\x07", "\x7f", "\u009b", "\x9b"} {
		if strings.Contains(out.String(), c) {
			t.Errorf("the status text has %q:\n%q", c, out.String())
		}
	}
	if !strings.Contains(out.String(), `\x1b]0;pwned\a\x1b[2J`) || !strings.Contains(out.String(), `line \x9b2J`) {
		t.Errorf("the escaped error is not shown:\n%s", out.String())
	}
}

// TestStatus_NamesShowTheirHiddenCharacters: a user name may hold
// Unicode's format characters, which Dovecot accepts: U+202E, the
// right-to-left override, prints the rest of the line backwards (the
// times and the error seem to belong to another user), and a zero-width
// space makes two users look like one. The record and every list show
// them escaped; so are the names a --url answer brings.
func TestStatus_NamesShowTheirHiddenCharacters(t *testing.T) {
	now := time.Now()
	user := "evil\u202egro.elpmaxe@ecila"
	s := state.UserStatus{User: user, LastFailure: now, LastError: "x", LastFailureClass: "tempfail\u200b", FailedSince: now,
		PendingSince: now, PendingHost: "mail\u2028a", InProgress: true, InProgressSince: now, InProgressBy: "inst\ufeff",
		States: map[string]int{"tcp:b\u2029:1": 3}}
	var out bytes.Buffer
	if err := printUser(&out, s, now); err != nil {
		t.Fatal(err)
	}
	o := overview{FailedUsers: []state.UserStatus{s},
		RunningUsers: []state.UserStatus{s},
		PendingUsers: []state.PendingUser{{User: user, Since: now, Host: "mail\u2028a"}}}
	if err := printOverview(&out, o, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"\u202e", "\u200b", "\u2028", "\u2029", "\ufeff"} {
		if strings.Contains(out.String(), c) {
			t.Errorf("the status text has %q:\n%q", c, out.String())
		}
	}
	if n := strings.Count(out.String(), `evil\u202egro.elpmaxe@ecila`); n != 4 {
		t.Errorf("the escaped name shows %d times, want 4 (the record, in progress, failed, pending):\n%s", n, out.String())
	}
}
