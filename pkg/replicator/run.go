package replicator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// minAttempt is the least time worth starting a retry in: a retry that
// cannot finish before the request's deadline is left to the sweep.
const minAttempt = 500 * time.Millisecond

// job is one request that holds the user's lock.
type job struct {
	r     *Replicator
	req   change.Request
	ep    doveadm.Endpoint
	host  string
	token string
	// taken: when the call that took the lock was sent.
	taken time.Time
	// rounds: the round running, from 1 (a rerun is round 2 and on).
	rounds int
	res    change.Result
	// escalated: this round's one full rerun after exit code 65 or 68
	// has been given.
	escalated bool
	// changed counts this round's last attempts in a row that answered
	// exit code 2.
	changed int
	// fullAsked: a full sync was asked for (the request, or one that
	// arrived while the user was busy) and none has succeeded since; a
	// failure that gives up the lock asks for it again.
	fullAsked bool
	// tempfails counts this round's incremental attempts in a row that
	// answered exit code 75; tempfailFull is the round's one full rerun
	// after them: 0 not given, 1 the next attempt, 2 given.
	tempfails    int
	tempfailFull int
}

// needsFull: a full sync was asked for while the user was busy, or there
// is no stored state for the destination (the user's first dsync, or Redis
// lost it). Without -s or -f, doveadm compares each mailbox's counters
// only (UIDNEXT, HIGHESTMODSEQ, message count, UIDVALIDITY), skips one
// whose counters match on both sides though its messages differ, and
// answers success (e2e TestFirstSyncWithoutState). Dovecot 2.3's
// replicator also began each user with a full sync.
func needsFull(c state.Claim) bool {
	return c.FullRequested || c.State == ""
}

// run runs dsync under the lock until it succeeds with no newer marks
// left, or fails for good, or is cut off.
func (j *job) run(ctx context.Context, claim state.Claim) (change.Result, error) {
	r, user, prio := j.r, j.req.User, string(j.req.Priority)
	lease, stop := r.keepLock(ctx, user, j.token, j.taken)
	defer stop()
	lctx := lease.ctx
	r.m.inProgress.Inc()
	defer r.m.inProgress.Dec()

	fl := r.flights.begin(user, j.host, claim.Start, lease)
	defer r.flights.end(user, fl)

	full := j.req.Full || needsFull(claim)
	j.fullAsked = j.req.Full || claim.FullRequested
	attempt, total := 0, 0
	j.rounds = 1
	covered := 1 + claim.Merged
	oldest := earliest(j.req.Time, claim.PendingSince, claim.Start)
	for {
		attempt++
		total++
		began := time.Now()
		out, err := r.tr.Sync(lctx, j.ep, doveadm.SyncRequest{
			User: user, Destination: j.ep.Destination, State: claim.State, Full: full, LockTimeout: r.opts.LockTimeout,
			ExcludeMailboxes: r.opts.ExcludeMailboxes,
		})
		if err != nil && errors.Is(context.Cause(lctx), doveadm.ErrLockLost) {
			err = fmt.Errorf("%w: %w", doveadm.ErrLockLost, err)
		}
		if out.StateLeftOut > 0 {
			// The transport ran it as a full sync without the state,
			// which it could not pass: record it as full.
			full = true
			r.m.leftOut.Inc()
			r.leftOutLogs.Log(ctx, r.log, slog.LevelWarn, "", "dsync state too large for doveadm: ran a full sync without it",
				"user", user, "state_bytes", out.StateLeftOut, "endpoint", j.ep,
				"fix", "none needed: each dsync of this user is a full one; Dovecot 2.4's doveadm HTTP API takes a state of at most 32 KiB (some 550 mailboxes, shared and public ones included), 2.3's a request of 1 MiB, doveadm-exec 128 KiB")
		}
		if out.StateDropped > 0 {
			r.m.leftOut.Inc()
			r.leftOutLogs.Log(ctx, r.log, slog.LevelWarn, "", "dsync state too large to keep: not stored, the next dsync is a full one",
				"user", user, "state_bytes", out.StateDropped, "endpoint", j.ep,
				"fix", "none needed: no doveadm takes a state over 1 MiB (some 17,000 mailboxes) back")
		}
		r.m.duration.WithLabelValues(prio).Observe(time.Since(began).Seconds())
		rule := doveadm.Decide(err)
		r.m.dsyncs.WithLabelValues(rule.Class, prio).Inc()

		rerun, merged := r.flights.close(fl)
		covered += merged
		if err == nil {
			cctx, cancel := j.cleanupCtx(ctx)
			end, next, serr := r.store.Succeed(cctx, state.SuccessArgs{
				User: user, Token: j.token, Host: j.host, Destination: j.ep.Destination, NewState: out.State, DropState: out.StateDropped > 0,
				Start: claim.Start, TTL: r.opts.LockTTL, Full: full,
				MayRerun: j.rounds < r.opts.MaxRounds && lctx.Err() == nil && timeLeft(ctx, minAttempt), Rerun: rerun,
			})
			cancel()
			if serr != nil {
				// The dsync ran but is not recorded: answer so that the
				// change is redelivered, and give the lock up if Redis
				// answers again, with the change left marked, so that
				// the redelivery runs a dsync instead of finding the
				// user busy with an attempt that is over. Nothing is
				// counted as failed. If Redis still does not answer, the
				// lock expires by its TTL. A rerun's is a rerun cut off:
				// the round before covered the request's change.
				f := change.Failure{Error: "success not recorded: " + serr.Error(), Start: claim.Start}
				if j.res.Outcome == change.Synced {
					return j.cutRerun(ctx, f, serr)
				}
				cctx, cancel := j.cleanupCtx(ctx)
				j.release(cctx, f, true)
				cancel()
				return change.Result{}, fmt.Errorf("%w: %w", ErrUnavailable, serr)
			}
			r.cover.record(user, claim.Start)
			if next.Decision == state.Done {
				// Changes left while busy that happened before this
				// attempt started: it covered them.
				covered += next.Merged
			}
			lag := end.Sub(oldest)
			r.m.lag.WithLabelValues(prio).Observe(max(lag, 0).Seconds())
			j.res.Outcome, j.res.Start, j.res.End, j.res.Lag = change.Synced, claim.Start, end, lag
			j.res.Coalesced, j.res.Full, j.res.Attempts = covered, full, total
			switch next.Decision {
			case state.Run:
				// Changes arrived during this dsync: run once more, now.
				j.rounds++
				r.m.reruns.Inc()
				claim, attempt = next, 0
				covered += next.Merged
				full, j.escalated, j.changed, j.fullAsked = needsFull(next), false, 0, next.FullRequested
				j.tempfails, j.tempfailFull = 0, 0
				r.flights.reopen(fl, claim.Start)
				continue
			case state.Left:
				j.askAgain(ctx, lctx, end)
			}
			return j.res, nil
		}

		f := j.failure(err, rule, claim, attempt, full)
		if ctx.Err() != nil || errors.Is(err, doveadm.ErrLockLost) {
			return j.abort(ctx, f, err, false)
		}
		delay, retry := j.next(ctx, rule, attempt, &full)
		switch {
		case !retry:
			// This round ends here, whatever the policy's bound was (a
			// class never retried, the once-more full rerun spent, no
			// time left): "attempt 1 of 4" would promise retries.
			f.MaxAttempts = attempt
		case rule.Action == doveadm.EscalateFull:
			f.MaxAttempts = attempt + 1 // once more, as a full sync
		}
		if rule.Action == doveadm.ReportConfig {
			r.m.config.WithLabelValues(rule.Class).Inc()
			r.log.Error("dsync failed: configuration problem, an admin must fix it", "user", user,
				"endpoint", j.ep, "class", rule.Class, "reason", rule.Reason, "err", f.Error)
		}
		if !retry {
			return j.fail(ctx, f, rule, total, rerun)
		}
		f.RetryAt, f.RetryBy = time.Now().Add(delay), change.RetryBySync
		r.log.Warn("dsync attempt failed, retrying", "user", user, "attempt", f.Attempt, "class", rule.Class,
			"retry_in", delay, "err", f.Error)
		if _, ferr := r.store.Fail(ctx, state.FailureArgs{User: user, Token: j.token, Host: j.host,
			Error: f.Error, Class: f.Class, ExitCode: f.ExitCode, Start: f.Start}); ferr != nil {
			r.log.Warn("could not record a failed attempt", "user", user, "err", ferr)
		}
		if r.notify != nil {
			r.notify.AttemptFailed(ctx, j.req, f)
		}
		if err := r.sleep(lctx, delay); err != nil {
			return j.abort(ctx, f, err, true)
		}
		c, err := r.store.Restart(lctx, user, j.token, j.ep.Destination, r.opts.LockTTL)
		if err == nil && c.Decision == state.Excluded {
			// Excluded while it failed: no retry; Restart released the
			// lock and left the user neither pending nor failed.
			r.log.Info("user excluded during its dsync; not retried", "user", user, "attempts", total)
			return j.excluded(total), nil
		}
		if err == nil && c.Decision != state.Run {
			err = doveadm.ErrLockLost
		}
		if err != nil {
			return j.abort(ctx, f, err, true)
		}
		claim = c
		covered += c.Merged
		full = full || needsFull(c)
		j.fullAsked = j.fullAsked || c.FullRequested
		r.flights.reopen(fl, claim.Start)
	}
}

// askAgain hands the user back to the Broker when changes kept arriving
// during --max-rounds dsyncs: a user that changes without pause gets a
// worker again only behind the lane's other work, and the changes of the
// last round wait for it, not for the sweep (a burst of mail ending there
// would otherwise leave its last messages on the source until the sweep).
// A request cut off (lctx ended) leaves them to the next event or the
// sweep, as does a failed send: they stay pending in Redis.
func (j *job) askAgain(ctx, lctx context.Context, at time.Time) {
	r, user, rounds := j.r, j.req.User, j.rounds
	if r.notify == nil || lctx.Err() != nil {
		r.log.Info("changes arrived during dsync; left for the next event or the sweep", "user", user, "rounds", rounds)
		return
	}
	if err := r.notify.AskAgain(ctx, j.req, at); err != nil {
		r.m.askedAgain.WithLabelValues("failed").Inc()
		r.log.Warn("changes arrived during dsync; not asked for again, left for the next event or the sweep",
			"user", user, "rounds", rounds, "err", err)
		return
	}
	r.m.askedAgain.WithLabelValues("sent").Inc()
	r.log.Info("changes arrived during dsync; asked for again through the Broker", "user", user, "rounds", rounds)
}

// next decides whether and when to retry a failed attempt, by the policy
// table, the configured bounds and the time left.
func (j *job) next(ctx context.Context, rule doveadm.Rule, attempt int, full *bool) (time.Duration, bool) {
	o := j.r.opts
	limit := o.MaxAttempts
	if rule.Attempts > 0 && rule.Attempts < limit {
		limit = rule.Attempts
	}
	var delay time.Duration
	retry := false
	if rule.Action != doveadm.RunAgain {
		j.changed = 0 // exit codes 2 in a row only
	}
	fullAfterTempfails := j.tempfailFull == 1
	if fullAfterTempfails {
		j.tempfailFull = 2
	}
	if rule.Class != doveadm.ClassTempfail {
		j.tempfails = 0
	}
	switch rule.Action {
	case doveadm.RunAgain:
		delay, retry = o.RunAgainDelay, attempt < limit
		// A second exit code 2 in a row: the rerun is a full sync. dsync
		// answers 2 also when an incremental sync with this state cannot
		// work ("Failed to do incremental sync for mailbox INBOX, retry
		// with a full sync", in the destination's log only: a replica
		// whose mail store was lost and rebuilt empty), and then to every
		// rerun with the same state (measured: e2e TestReplicaWiped).
		// Dovecot 2.3's replicator dropped the state after any failed
		// dsync. One rerun with the state first: a mailbox that changed
		// during the sync needs no more. The full sync stays asked for
		// when this round ends before it (no attempts left, a stop), so
		// that the next one, the sweep's retry, is full.
		j.changed++
		if j.changed >= 2 {
			*full, j.fullAsked = true, true
		}
	case doveadm.Retry:
		delay, retry = backoff(o.Backoff, o.MaxBackoff, attempt), attempt < limit
		if rule.Class != doveadm.ClassTempfail {
			break
		}
		// dsync answers 75 also when an incremental sync with this state
		// cannot work ("Failed to do incremental sync for mailbox X,
		// retry with a full sync (highest_modseq 1 < 2)", in the source's
		// log only), and then to every rerun with the same state: a
		// folder that a race brought back on one side (measured: e2e
		// BenchmarkSoak, 2.3 and 2.4). So after a second 75 in a row, or
		// a first one when the next attempt is the last, the rerun is a
		// full sync, once a round. 75 is mostly a destination down or
		// busy, where a full attempt fails as fast as another: when it
		// answers 75 too, the state was not the cause, and the retries
		// go on with it. Nothing is asked for the sweep: after an outage
		// every user would get a full sync.
		switch {
		case fullAfterTempfails:
			*full = j.fullAsked
		case !*full:
			j.tempfails++
			if j.tempfailFull == 0 && (j.tempfails >= 2 || attempt+1 == limit) {
				j.tempfailFull, *full = 1, true
			}
		}
	case doveadm.EscalateFull:
		// Once, even after a full attempt (a first dsync is full, and a
		// folder deleted under it is as transient then): a rerun that fails
		// the same way is reported. Not at once: the destination's side of
		// the dsync that failed may still be writing (dsync locks one side
		// only), and a session that starts before it ends can miss what it
		// writes (measured: a deleted folder came back on the replica).
		if !j.escalated {
			j.escalated, *full, retry = true, true, true
			delay = backoff(o.Backoff, o.MaxBackoff, attempt)
		}
	}
	if dl, ok := ctx.Deadline(); retry && ok && time.Until(dl) < delay+minAttempt {
		retry = false
	}
	return delay, retry
}

// fail records a final failure: the user stays marked failed (and its
// change pending) for the sweep, the lock is released. rerun: changes
// were merged into the attempt after it started.
func (j *job) fail(ctx context.Context, f change.Failure, rule doveadm.Rule, total int, rerun bool) (change.Result, error) {
	f.RetryBy = change.RetryNone
	if rule.Retryable {
		f.RetryBy = change.RetryBySweep
	}
	cctx, cancel := j.cleanupCtx(ctx)
	defer cancel()
	gone := rule.Class == doveadm.ClassNoUser
	if _, err := j.r.store.Fail(cctx, state.FailureArgs{User: j.req.User, Token: j.token, Host: j.host,
		Error: f.Error, Class: f.Class, ExitCode: f.ExitCode, At: j.req.Time, Final: true, Release: true, Full: j.fullAsked,
		Start: f.Start, Gone: gone, Rerun: rerun}); err != nil {
		return change.Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if gone {
		j.r.log.Warn("dsync failed: no such user; its marks are dropped, as for a deleted user", "user", j.req.User,
			"exit_code", f.ExitCode, "err", f.Error)
	} else {
		j.r.log.Warn("dsync failed after its last attempt; user marked failed", "user", j.req.User, "attempts", total,
			"class", f.Class, "exit_code", f.ExitCode, "retry_by", f.RetryBy, "err", f.Error)
	}
	j.res.Outcome, j.res.Failure, j.res.Attempts = change.Failed, &f, total
	j.res.Start, j.res.End, j.res.Full = f.Start, f.End, f.Full
	return j.res, nil
}

// abort handles an attempt cut off (lock lost, shutdown, Redis gone): the
// lock is released if still ours, the change left pending, and the caller
// answers so that it is delivered again. counted: f was recorded and
// reported when it failed, and the cut came during its retry's backoff;
// it is neither counted nor reported again.
func (j *job) abort(ctx context.Context, f change.Failure, cause error, counted bool) (change.Result, error) {
	if j.res.Outcome == change.Synced {
		return j.cutRerun(ctx, f, cause)
	}
	// This request makes no more attempts: "attempt 1 of 4" would promise
	// retries, the policy's bound of the cut's class (1 for a lost lock)
	// could be below the attempt's number.
	f.RetryBy, f.RetryAt, f.MaxAttempts = change.RetryByBroker, time.Time{}, f.Attempt
	cctx, cancel := j.cleanupCtx(ctx)
	defer cancel()
	j.release(cctx, f, counted)
	if j.r.notify != nil && !counted {
		j.r.notify.AttemptFailed(cctx, j.req, f)
	}
	j.r.log.Warn("dsync aborted; the change stays pending and is delivered again", "user", j.req.User, "cause", cause)
	return change.Result{}, fmt.Errorf("%w: sync %s: %w", ErrAborted, j.req.User, cause)
}

// excluded is the result of a request whose user was excluded while an
// attempt of it waited for its retry: Excluded, unless an earlier round
// of it succeeded. That round covered the request's change, and its
// success stays the answer, so that the dsync that ran is reported.
func (j *job) excluded(attempts int) change.Result {
	if j.res.Outcome != change.Synced {
		j.res.Outcome = change.Excluded
	}
	j.res.Attempts = attempts
	return j.res
}

// cutRerun handles a rerun cut off after an earlier round of this request
// succeeded. That round covered the request's change, so the answer is its
// success: a redelivery would find the change covered and run nothing,
// leaving the changes the rerun was for to the sweep. Those stay pending,
// and the user is asked for again through the Broker, timed after that
// round. A cut is not the user's failure: none is counted or reported.
func (j *job) cutRerun(ctx context.Context, f change.Failure, cause error) (change.Result, error) {
	cctx, cancel := j.cleanupCtx(ctx)
	defer cancel()
	j.release(cctx, f, true)
	j.r.log.Warn("dsync rerun cut off; its changes stay pending", "user", j.req.User, "cause", cause)
	j.askAgain(cctx, cctx, j.res.End)
	return j.res, nil
}

// release gives up the lock after f cut the attempt off, leaving the
// user's changes (and a full sync asked for) pending; counted: f is not
// counted as a failure (again).
func (j *job) release(ctx context.Context, f change.Failure, counted bool) {
	if _, err := j.r.store.Fail(ctx, state.FailureArgs{User: j.req.User, Token: j.token, Host: j.host,
		Error: f.Error, Class: f.Class, ExitCode: f.ExitCode, At: j.req.Time, Release: true, Full: j.fullAsked,
		Start: f.Start, Counted: counted}); err != nil {
		j.r.log.Warn("could not release the lock of a dsync cut off; it expires by its TTL", "user", j.req.User, "err", err)
	}
}

// timeLeft reports whether ctx leaves at least d before its deadline.
func timeLeft(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) >= d
}

func (j *job) failure(err error, rule doveadm.Rule, claim state.Claim, attempt int, full bool) change.Failure {
	limit := j.r.opts.MaxAttempts
	if rule.Attempts > 0 && rule.Attempts < limit {
		limit = rule.Attempts
	}
	return change.Failure{
		User: j.req.User, Host: j.host, Destination: j.ep.Destination,
		Error: doveadm.Redact(err.Error(), j.ep.Secrets()...), Class: rule.Class, ExitCode: doveadm.ExitCodeOf(err),
		Attempt: attempt, MaxAttempts: limit, Retryable: rule.Retryable, Full: full,
		Start: claim.Start, End: time.Now().UTC(),
	}
}

// cleanupCtx outlives the request's context: an outcome must be recorded
// and the lock released even when the client went away.
func (j *job) cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), j.r.opts.CleanupTimeout)
}

// backoff doubles base per attempt up to limit, with ±20% jitter so that
// users failing together do not retry together.
func backoff(base, limit time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// earliest returns the earliest non-zero time.
func earliest(ts ...time.Time) time.Time {
	var e time.Time
	for _, t := range ts {
		if !t.IsZero() && (e.IsZero() || t.Before(e)) {
			e = t
		}
	}
	return e
}
