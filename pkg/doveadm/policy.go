package doveadm

import (
	"errors"
	"fmt"
)

// Action is what the sync function does after a dsync attempt.
type Action string

const (
	// Done: the dsync succeeded.
	Done Action = "done"
	// RunAgain: run again soon, with the old state (exit code 2: the
	// mailbox changed during the sync); after a second exit code 2 in a
	// row, as a full sync.
	RunAgain Action = "run_again"
	// Retry: try again after a backoff.
	Retry Action = "retry"
	// EscalateFull: try once more as a full sync (exit code 65).
	EscalateFull Action = "escalate_full"
	// Report: do not retry; report the failure.
	Report Action = "report"
	// ReportConfig: do not retry; report loudly as a configuration problem
	// that an admin must fix.
	ReportConfig Action = "report_config"
)

// Rule is one row of the exit-code policy table.
type Rule struct {
	// Code is doveadm's exit code (0 for the rows keyed by Kind).
	Code int
	// Action is what to do next.
	Action Action
	// Class names the failure in metrics, logs and events.
	Class string
	// Retryable says whether the failure may pass on a later attempt; the
	// user then stays marked failed after the last attempt, for the sweep.
	Retryable bool
	// Attempts caps the attempts of a request that keeps failing this way;
	// 0 means the configured maximum.
	Attempts int
	// Reason explains the code to an admin.
	Reason string
}

// ClassNoUser is the class of exit code 67: the user does not exist.
const ClassNoUser = "no_user"

// ClassTempfail is the class of exit code 75: a temporary failure (and,
// with a state that no longer works, every incremental sync's answer).
const ClassTempfail = "tempfail"

// unknownAttempts bounds attempts on an exit code the table does not know:
// it may be transient, but retrying it forever would hide a new problem.
const unknownAttempts = 3

// Policy is the exit-code policy table: one row per doveadm exit code the
// sync function knows (see sysexits.h and doveadm's documentation).
// docs/sync.md renders the same table.
var Policy = []Rule{
	{Code: 0, Action: Done, Class: "success", Reason: "success"},
	{Code: 2, Action: RunAgain, Class: "changed", Retryable: true, Reason: "mailbox changed during sync, run again"},
	{Code: 65, Action: EscalateFull, Class: "data_error", Retryable: true, Reason: "data error, retry as a full sync"},
	{Code: 67, Action: Report, Class: ClassNoUser, Reason: "no such user"},
	// 68 is also what dsync answers when a folder is deleted while it
	// syncs it ("Mailbox was deleted under us", seen with Dovecot 2.3 and
	// 2.4 in the e2e suite). An incremental rerun with the old state can
	// miss the deletion; a full one does not. So once more as a full sync
	// before it is reported.
	{Code: 68, Action: EscalateFull, Class: "not_found", Retryable: true, Reason: "not found (a mailbox deleted during the sync: once more as a full sync)"},
	// 75 is also dsync's answer, measured with Dovecot 2.3 and 2.4, for
	// a destination that refuses it: another doveadm_password, a port
	// that is another listener (IMAP, doveadm's http one: "doveadm server
	// sent invalid handshake"), a mail folder it may not create
	// (permission denied). Over the HTTP API only the code comes back, so
	// the reason names each.
	{Code: 75, Action: Retry, Class: ClassTempfail, Retryable: true, Reason: "temporary failure (destination down or busy, or refusing dsync: its doveadm_password is not the source's, its port is not its doveadm listener, or its mail storage failed; the destination's log says which, or, for the user's dsync lock held by another dsync, the log of the server holding it)"},
	{Code: 77, Action: ReportConfig, Class: "no_permission", Reason: "no permission"},
	{Code: 78, Action: ReportConfig, Class: "config_error", Reason: "configuration error"},
}

// Rules for failures that carry no exit code.
var (
	transportRule    = Rule{Action: Retry, Class: "transport", Retryable: true, Reason: "no usable answer from doveadm"}
	unauthorizedRule = Rule{Action: ReportConfig, Class: "unauthorized", Reason: "doveadm rejected the credentials"}
	protocolRule     = Rule{Action: ReportConfig, Class: "protocol", Reason: "doveadm did not understand the request, or answered something unexpected"}
	tlsRule          = Rule{Action: ReportConfig, Class: "tls", Reason: "no TLS session with doveadm: its certificate was not accepted (doveadm-ca-file), its listener does not speak TLS, or it refused the handshake"}
	configRule       = Rule{Action: ReportConfig, Class: "config_error", Reason: "doveadm could not read its configuration (doveadm-config, or the host map entry's config)"}
	internalRule     = Rule{Action: Retry, Class: "internal", Retryable: true, Attempts: unknownAttempts, Reason: "doveadm internal error"}
	unknownRule      = Rule{Action: Retry, Class: "unknown", Retryable: true, Attempts: unknownAttempts, Reason: "unknown exit code"}
	// lostLockRule: the per-user lock expired under a running attempt; no
	// further attempt may run without it.
	lostLockRule = Rule{Action: Report, Class: "lost_lock", Retryable: true, Attempts: 1, Reason: "per-user lock lost during the sync"}
)

// Classes are every class Decide can give, success first.
func Classes() []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range append(Policy[:len(Policy):len(Policy)], transportRule, unauthorizedRule, protocolRule, tlsRule, configRule, internalRule, unknownRule, lostLockRule) {
		if !seen[r.Class] {
			seen[r.Class] = true
			out = append(out, r.Class)
		}
	}
	return out
}

// Lookup returns the policy row for an exit code; unknown codes get a
// bounded retry.
func Lookup(code int) Rule {
	for _, r := range Policy {
		if r.Code == code {
			return r
		}
	}
	r := unknownRule
	r.Code = code
	return r
}

// ErrLockLost is the cause given to a dsync cancelled because its per-user
// lock was lost.
var ErrLockLost = errors.New("per-user lock lost")

// Decide maps the outcome of a dsync attempt (nil for success) to its
// policy row.
func Decide(err error) Rule {
	if err == nil {
		return Lookup(0)
	}
	if errors.Is(err, ErrLockLost) {
		return lostLockRule
	}
	var de *Error
	if !errors.As(err, &de) {
		return transportRule
	}
	switch de.Kind {
	case KindExitCode:
		return Lookup(de.ExitCode)
	case KindUnauthorized:
		return unauthorizedRule
	case KindProtocol:
		return protocolRule
	case KindTLS:
		return tlsRule
	case KindInternal:
		return internalRule
	case KindConfig:
		return configRule
	}
	return transportRule
}

// String renders a rule for a log line.
func (r Rule) String() string {
	return fmt.Sprintf("%s (%s, action %s)", r.Class, r.Reason, r.Action)
}
