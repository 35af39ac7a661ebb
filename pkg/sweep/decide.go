package sweep

import (
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// decide chooses what the sweep does with one candidate at now: a request,
// a skip reason, or neither (the user is up to date). hosts are the
// sweep's listed hosts (entry.Host is an index + 1 into it).
//
// Like Dovecot 2.3's replicator, the full sync is due when the last full
// one is older than the interval, whatever else the user had since; its
// "last full sync" was set when one started, even if it then failed, so
// that a failing user is not hammered with full syncs. Here it is the later
// of the last successful dsync (when it was full) and the last full sync
// the sweep asked for.
//
// asked: an administrator asked for this sweep (Asked): failed users are
// tried again now, not only after FailedRetryInterval, since the cause was
// most likely just fixed.
func decide(e state.SweepEntry, f state.SweepFacts, now time.Time, o Options, hosts []string, asked bool) (*Request, string) {
	if doveadm.ValidateUser(e.User) != nil {
		return nil, SkipBadUser
	}
	if f.Excluded {
		return nil, SkipExcluded
	}
	lastFull := f.FullRequested
	if f.LastFullStart.After(lastFull) {
		lastFull = f.LastFullStart
	}
	if f.LastFull && f.LastStart.After(lastFull) { // a record from before last_full_start
		lastFull = f.LastStart
	}
	fullDue := o.FullSyncInterval > 0 && !lastFull.Add(o.FullSyncInterval).After(now)
	if f.InProgress && (!fullDue || f.LastStart.IsZero()) {
		// The running dsync starts after the sweep listed the user and
		// picks up its pending marks; asking again would only queue
		// another run behind it. Unless the full sync is due: the running
		// dsync is most likely incremental, and a user that is busy at
		// every sweep (a mailing-list archive) would never get one. Asked
		// for now, it is the lock owner's next round (Begin marks it).
		// A user never replicated before is having its first dsync, a
		// full one.
		return nil, SkipInProgress
	}
	var reason Reason
	switch {
	case f.Failed:
		// Due an interval after the failure, or after the retry the
		// sweep asked for since, which may still wait in its lane: each
		// copy would run a failing dsync. A time ahead of now (Redis's
		// clock stepped back since) holds nothing back.
		since := f.FailedAt
		if f.Asked.After(since) {
			since = f.Asked
		}
		if !asked && !since.After(now) && now.Before(since.Add(o.FailedRetryInterval)) {
			return nil, SkipRetryNotDue
		}
		reason = ReasonFailed
	case f.Pending:
		reason = ReasonPending
	case fullDue && f.LastStart.IsZero():
		reason = ReasonNever
	case fullDue:
		reason = ReasonStale
	case f.LastStart.Before(f.Recovery) && f.Gone.Before(f.Recovery):
		// Found gone since the recovery time (exit code 67 drops the
		// record, and last_start with it), the user was tried since.
		reason = ReasonRecovery
	default:
		return nil, ""
	}
	host := ""
	switch {
	case f.PendingHost != "" && doveadm.ValidateHost(f.PendingHost) == nil:
		// Where the change was seen: the user surely exists there.
		host = f.PendingHost
	case e.Host >= 1 && e.Host <= len(hosts):
		host = hosts[e.Host-1]
	case f.LastHost != "" && doveadm.ValidateHost(f.LastHost) == nil:
		// No host listed it (a failed or pending user without a host,
		// or ListKnown): where it was last replicated from.
		host = f.LastHost
	}
	return &Request{User: e.User, Host: host, Full: fullDue, Reason: reason, Time: now}, ""
}
