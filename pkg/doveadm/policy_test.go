package doveadm

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestDecide_PolicyTable(t *testing.T) {
	exit := func(code int) error { return &Error{Kind: KindExitCode, ExitCode: code, Op: "sync u1"} }
	tests := []struct {
		name      string
		err       error
		action    Action
		class     string
		retryable bool
		attempts  int
	}{
		{"success", nil, Done, "success", false, 0},
		{"2 run again", exit(2), RunAgain, "changed", true, 0},
		{"65 escalates", exit(65), EscalateFull, "data_error", true, 0},
		{"67 no user", exit(67), Report, "no_user", false, 0},
		{"68 not found", exit(68), EscalateFull, "not_found", true, 0},
		{"75 tempfail", exit(75), Retry, "tempfail", true, 0},
		{"77 permission", exit(77), ReportConfig, "no_permission", false, 0},
		{"78 config", exit(78), ReportConfig, "config_error", false, 0},
		{"unknown code", exit(89), Retry, "unknown", true, unknownAttempts},
		{"transport", &Error{Kind: KindTransport}, Retry, "transport", true, 0},
		{"plain error", errors.New("EOF"), Retry, "transport", true, 0},
		{"deadline", context.DeadlineExceeded, Retry, "transport", true, 0},
		{"401", &Error{Kind: KindUnauthorized}, ReportConfig, "unauthorized", false, 0},
		{"protocol", &Error{Kind: KindProtocol}, ReportConfig, "protocol", false, 0},
		{"tls", &Error{Kind: KindTLS}, ReportConfig, "tls", false, 0},
		{"internal", &Error{Kind: KindInternal}, Retry, "internal", true, unknownAttempts},
		{"lost lock", fmt.Errorf("sync u1: %w", ErrLockLost), Report, "lost_lock", true, 1},
		{"wrapped exit code", fmt.Errorf("outer: %w", exit(75)), Retry, "tempfail", true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Decide(tt.err)
			if r.Action != tt.action || r.Class != tt.class || r.Retryable != tt.retryable || r.Attempts != tt.attempts {
				t.Errorf("Decide(%v) = %+v, want action %s class %s retryable %v attempts %d",
					tt.err, r, tt.action, tt.class, tt.retryable, tt.attempts)
			}
		})
	}
}

func TestPolicy_EveryCodeOnce(t *testing.T) {
	seen := map[int]bool{}
	for _, r := range Policy {
		if seen[r.Code] {
			t.Errorf("exit code %d twice in the policy table", r.Code)
		}
		seen[r.Code] = true
		if r.Reason == "" || r.Class == "" {
			t.Errorf("row %d lacks a reason or class", r.Code)
		}
	}
	for _, code := range []int{0, 2, 65, 67, 68, 75, 77, 78} {
		if !seen[code] {
			t.Errorf("exit code %d missing from the policy table", code)
		}
	}
}

// Exit code 75 is also dsync's answer when the destination refuses the
// source's doveadm_password (measured with Dovecot 2.3 and 2.4, e2e and
// docs/operations.md): the message says so, since it reads the same as a
// destination that is down and the source's log is the only other clue.
func TestError_MessageNamesUserAndCode(t *testing.T) {
	err := error(&Error{Kind: KindExitCode, ExitCode: 75, Op: op("u1", "http://a:8080/doveadm/v1")})
	want := "sync u1 via doveadm at http://a:8080/doveadm/v1: exit code 75 (temporary failure (destination down or busy, or refusing dsync: its doveadm_password is not the source's, its port is not its doveadm listener, or its mail storage failed; the destination's log says which, or, for the user's dsync lock held by another dsync, the log of the server holding it))"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err.Error(), want)
	}
	if ExitCodeOf(fmt.Errorf("x: %w", err)) != 75 || ExitCodeOf(errors.New("x")) != 0 {
		t.Error("ExitCodeOf")
	}
}

// TestRedact: a secret is taken out as it is and as %q spells it.
// TestEndpoint_SecretsLongestFirst: an API key that holds the password
// is redacted whole, not left with its rest showing after the password
// was replaced first.
func TestEndpoint_SecretsLongestFirst(t *testing.T) {
	ep := Endpoint{User: "doveadm", Password: "hunter2", APIKey: "hunter2-api-9f8e7d"}
	if got := Redact("bad key hunter2-api-9f8e7d, password hunter2", ep.Secrets()...); got != "bad key ***, password ***" {
		t.Errorf("redacted %q", got)
	}
	sec := ep.Secrets()
	for i := 1; i < len(sec); i++ {
		if len(sec[i]) > len(sec[i-1]) {
			t.Errorf("secrets not longest first: %q", sec)
		}
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, secret, want string }{
		{"pw=s3cret!", "s3cret!", "pw=***"},
		{`reply "pa\"ss\\word" refused`, `pa"ss\word`, `reply "***" refused`},
		{`"päss\x00"`, "päss\x00", `"***"`},
		{"tab\there", "tab\there", "***"},
		{`"tab\there"`, "tab\there", `"***"`},
		{"tag \"00000\ufffd\" refused", "00000\xeb", `tag "***" refused`},
		{"nothing to hide", "s3cret", "nothing to hide"},
		{"", "", ""},
		// Inside other words too, even a short secret: no echo of it may
		// survive, whatever stands next to it.
		{"user test1@example.org: pw=0test0", "test", "user ***1@example.org: pw=0***0"},
	} {
		if got := Redact(tc.in, tc.secret); got != tc.want {
			t.Errorf("Redact(%q, %q) = %q, want %q", tc.in, tc.secret, got, tc.want)
		}
	}
}
