package change

import "time"

// Request asks for one user's mail to be replicated: either a Change seen
// on a Dovecot host, or an explicit request (an admin, the sweep).
type Request struct {
	// ID identifies the event the request came from, for logs.
	ID string
	// User is the Dovecot username to replicate.
	User string
	// Host is the Dovecot host the change was seen on; it selects the
	// doveadm endpoint and destination. Empty means the default host.
	Host string
	// Time is when the change happened (or the request was made). A dsync
	// that started after it covers it. Zero means "now".
	Time time.Time
	// Observed is Change.Observed: when set, it is compared with dsync
	// starts instead of Time, exactly, without the clock-skew margin.
	Observed time.Time
	// Priority is the lane the request came through.
	Priority Priority
	// Full asks for a full sync instead of an incremental one.
	Full bool
	// Explicit is true for a replication request, false for a change.
	Explicit bool
}

// Outcome is what the sync function decided and did for one request.
type Outcome string

const (
	// Synced: a dsync ran and succeeded, covering the request.
	Synced Outcome = "synced"
	// Covered: a dsync that started after the change already succeeded;
	// nothing to do.
	Covered Outcome = "covered"
	// Coalesced: a dsync of the user is running elsewhere; the request was
	// left as a pending mark that the running dsync's owner picks up.
	Coalesced Outcome = "coalesced"
	// Excluded: the user is excluded from replication.
	Excluded Outcome = "excluded"
	// Failed: every attempt failed; the user stays marked failed.
	Failed Outcome = "failed"
)

// Result reports a dsync that ran (Synced or Failed), or why none ran.
type Result struct {
	Outcome Outcome
	User    string
	// Host is the source Dovecot host the dsync ran on.
	Host string
	// Destination is the dsync destination (e.g. tcp:replica:12345).
	Destination string
	// Start and End bound the last dsync attempt.
	Start, End time.Time
	// Lag is the time from the oldest change the dsync covered to its end.
	Lag time.Duration
	// Coalesced is how many changes the dsync covered (at least 1).
	Coalesced int
	// Full is true when the last attempt was a full sync.
	Full bool
	// Attempts counts dsync attempts for this request, reruns included.
	Attempts int
	// Failure describes the last failed attempt (Outcome Failed).
	Failure *Failure
}

// Failure describes one failed dsync attempt.
type Failure struct {
	User        string
	Host        string
	Destination string
	// Error says what went wrong, without secrets.
	Error string
	// Class names the kind of failure (tempfail, transport, no_user, ...).
	Class string
	// ExitCode is doveadm's exit code, or 0 for a transport error.
	ExitCode int
	// Attempt numbers the attempt, from 1; MaxAttempts bounds it.
	Attempt, MaxAttempts int
	// Retryable says whether this kind of failure may pass on a retry.
	Retryable bool
	// RetryAt is when the sync function tries again; zero when it does not.
	RetryAt time.Time
	// RetryBy says who retries: RetryBySync (at RetryAt), RetryByBroker
	// (the attempt was cut off and the event is redelivered),
	// RetryBySweep (the user stays marked failed) or RetryNone.
	RetryBy string
	// Full is true when the failed attempt was a full sync.
	Full bool
	// Start and End bound the attempt.
	Start, End time.Time
}

// Who retries a failed attempt.
const (
	RetryBySync   = "sync"
	RetryByBroker = "broker"
	RetryBySweep  = "sweep"
	RetryNone     = "none"
)

// Final reports whether the sync function itself does not retry.
func (f *Failure) Final() bool { return f.RetryBy != RetryBySync }
