// Package doveadm runs dsync through Dovecot's doveadm: over its HTTP API
// (the default; the sync function then needs no Dovecot binaries) or as a
// local `doveadm sync` process. It also holds what every transport shares:
// the exit-code policy table, username validation and the host map that
// tells, for a source Dovecot host, where its doveadm is and where to sync to.
package doveadm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Transport names, as the sync function's "transport" setting spells them.
const (
	TransportHTTP = "doveadm-http"
	TransportExec = "doveadm-exec"
)

// SyncRequest is one two-way dsync of a user to a destination.
type SyncRequest struct {
	User string
	// Destination is dsync's destination, e.g. "tcp:replica:12345".
	Destination string
	// State is the state the previous dsync returned; empty for a full
	// comparison.
	State string
	// Full asks for a full sync (doveadm sync -f, fullSync).
	Full bool
	// LockTimeout bounds how long dsync waits for its own per-user lock
	// (lockTimeout, -l); zero asks for none.
	LockTimeout time.Duration
	// StallTimeout is how long dsync waits for its destination to send
	// anything once their dsync streams began (timeout, -T), in whole
	// seconds, rounded up; zero leaves Dovecot's 600 s. The transports
	// set it to what is left of the call's bound (stallTimeout).
	StallTimeout time.Duration
	// ExcludeMailboxes are the mailboxes dsync leaves out (-x,
	// excludeMailbox; ParseExcludeMailboxes).
	ExcludeMailboxes []string
}

// maxStallTimeout is Dovecot's own stall timeout (2.3 and 2.4): a longer
// one would only keep a stalled dsync longer than Dovecot does.
const maxStallTimeout = 600 * time.Second

// stallTimeout is the StallTimeout of a call bounded by bound (zero: no
// bound) and ctx's deadline: what is left of the nearer, at most
// maxStallTimeout, zero without either.
// A dsync whose destination stalls is then ended by Dovecot no sooner
// than dovewarden gives up on it (its stall begins after the request
// left, and seconds are rounded up), and no later: with doveadm-http a
// dsync cut off at its bound otherwise ran on in Dovecot until its
// destination went on or Dovecot's 600 s ran out, each keeping a doveadm
// process of its source host's process_limit and the user's dsync lock
// (measured with 2.3 and 2.4: TestDsyncStallEndsAtItsTimeout). Dovecot
// ends it with exit code 75. A destination that accepts the connection
// and never answers doveadm's handshake is not covered: that wait comes
// before dsync's, and Dovecot bounds it with nothing.
func stallTimeout(ctx context.Context, bound time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok && (bound <= 0 || time.Until(dl) < bound) {
		bound = time.Until(dl)
	}
	return min(bound, maxStallTimeout)
}

// wholeSeconds is d in whole seconds, rounded up, at least 1: the unit of
// dsync's lockTimeout and timeout (-l, -T).
func wholeSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// SyncResult is what a dsync returned.
type SyncResult struct {
	// State is the new dsync state to pass to the next incremental sync.
	State string
	// StateLeftOut is the size of the request's State when the transport
	// could not pass it (too large for Dovecot or for an argument) and ran
	// a full sync without it instead; set with an error too, since that
	// attempt was a full one.
	StateLeftOut int
	// StateDropped is the size of the state the dsync returned when it
	// was larger than any doveadm takes back (maxStateKept): it is not
	// kept, State is empty, and the next dsync is a full one, as it
	// would be with it.
	StateDropped int
}

// withoutState runs req through sync again as a full sync without its
// state, which sync could not pass: a dsync state is about 60 bytes a
// mailbox (shared and public ones included), and Dovecot 2.4's doveadm
// HTTP API refuses a JSON string over 32 KiB (some 550 mailboxes), 2.3's
// a request over 1 MiB, and Linux an argument over 128 KiB (doveadm-exec).
// Without the state dsync must compare everything (-f), so such a user's
// every dsync is a full one; the next state it returns is as large.
func withoutState(ctx context.Context, ep Endpoint, req SyncRequest, sync func(context.Context, Endpoint, SyncRequest) (SyncResult, error)) (SyncResult, error) {
	n := len(req.State)
	req.State, req.Full = "", true
	res, err := sync(ctx, ep, req)
	res.StateLeftOut = n
	return res, err
}

// Transport runs one dsync on the doveadm of an endpoint.
type Transport interface {
	Sync(ctx context.Context, ep Endpoint, req SyncRequest) (SyncResult, error)
}

// Kind classifies a failed doveadm call.
type Kind string

const (
	// KindExitCode: doveadm ran the command and it failed with ExitCode.
	KindExitCode Kind = "exit_code"
	// KindTransport: no usable answer (refused, reset, EOF, empty reply,
	// timeout, HTTP 5xx). Dovecot 2.3's doveadm closes the connection
	// without an answer (EOF) when the destination refuses dsync's.
	KindTransport Kind = "transport"
	// KindUnauthorized: doveadm rejected the credentials (HTTP 401).
	KindUnauthorized Kind = "unauthorized"
	// KindProtocol: doveadm answered something the transport did not
	// understand, or a non-exit-code error (unknownMethod, invalidRequest).
	KindProtocol Kind = "protocol"
	// KindInternal: doveadm reported internalError.
	KindInternal Kind = "internal"
	// KindTLS: no TLS session with an https doveadm URL: its certificate
	// did not verify (an unknown CA, another name, expired), the listener
	// does not speak TLS, or it refused the handshake (no shared protocol
	// version or cipher, a client certificate required); or an http URL
	// whose listener speaks TLS.
	KindTLS Kind = "tls"
	// KindConfig: doveadm-exec's doveadm could not read its configuration
	// (-c CONF: a file missing or unreadable). doveadm answers it with exit
	// code 75, as for a destination that is down; its error says which.
	KindConfig Kind = "config"
)

// configUnreadable tells doveadm's error for a configuration it could not
// read: "Fatal: Error reading configuration: ..." (Dovecot 2.3), "Fatal:
// Failed to read configuration: ..." (2.4).
func configUnreadable(stderr string) bool {
	return strings.Contains(stderr, "Fatal: Error reading configuration") || strings.Contains(stderr, "Fatal: Failed to read configuration")
}

// Error is a failed doveadm call. Its message never contains a password.
type Error struct {
	Kind Kind
	// ExitCode is doveadm's exit code (KindExitCode).
	ExitCode int
	// Op says what was attempted: "sync u1 via doveadm at http://host/...".
	Op string
	// Detail is what went wrong.
	Detail string
	// Err is the underlying error, when there is one.
	Err error
	// tooLarge: the doveadm HTTP API refused the request for its size
	// (read from the reply before any password in it is masked).
	tooLarge bool
	// listing: the error is a user listing's, whose exit codes mean
	// what sysexits.h says, not what the sync policy does about them.
	listing bool
}

// exitNames are sysexits.h's meanings of doveadm's exit codes.
var exitNames = map[int]string{65: "data error", 67: "no such user", 68: "not found", 75: "temporary failure",
	77: "no permission", 78: "configuration error"}

// listingFailed is what exit code 65 of a user listing means. Measured
// with Dovecot 2.3 and 2.4: the HTTP API answers it, with no user, when a
// userdb fails while the users are listed (a passwd-file missing) or
// cannot list them (a static userdb, an SQL or LDAP one without its
// iterate settings); the CLI says "User listing returned failure" and
// exits 75. A bare "data error" named neither. A passwd-file of some
// 400,000 users or more runs the auth-worker out of memory at its default
// vsz_limit (256 MB), on 2.3 and 2.4: every listing then fails so.
const listingFailed = "data error: a userdb failed while listing its users (an auth-worker out of memory: a passwd-file of some 400,000 users needs a larger service auth-worker { vsz_limit }), or cannot list them; Dovecot's log says which"

func (e *Error) Error() string {
	if e.Kind == KindExitCode {
		meaning := Lookup(e.ExitCode).Reason
		if e.listing {
			if meaning = exitNames[e.ExitCode]; meaning == "" {
				meaning = "failed"
			}
			if e.ExitCode == 65 {
				meaning = listingFailed
			}
		}
		return fmt.Sprintf("%s: exit code %d (%s)%s", e.Op, e.ExitCode, meaning, suffix(e.Detail))
	}
	if e.Kind == KindConfig {
		return fmt.Sprintf("%s: exit code %d: doveadm could not read its configuration%s", e.Op, e.ExitCode, suffix(e.Detail))
	}
	return fmt.Sprintf("%s: %s", e.Op, e.Detail)
}

func (e *Error) Unwrap() error { return e.Err }

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

// ExitCodeOf returns the doveadm exit code carried by err, or 0.
func ExitCodeOf(err error) int {
	var de *Error
	if errors.As(err, &de) && (de.Kind == KindExitCode || de.Kind == KindConfig) {
		return de.ExitCode
	}
	return 0
}

// Redact replaces every secret in s with "***", a last guard so that no
// password reaches a log, an error or an event even if a lower layer
// echoed one. It also replaces a secret as a JSON decoder reads it (each
// invalid UTF-8 byte a U+FFFD) and as Go's %q spells either (quotes and
// backslashes escaped), since messages quote what a server answered.
// Every occurrence, inside other words too: a short password such as
// "test" masks part of every name holding it (docs/configuration.md).
func Redact(s string, secrets ...string) string {
	return config.ReplaceSecrets(s, "***", secrets)
}

// op names a sync call for error messages.
func op(user, where string) string {
	return fmt.Sprintf("sync %s via doveadm at %s", user, where)
}
