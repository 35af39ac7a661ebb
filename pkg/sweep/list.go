package sweep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// listChunk is how many listed users go to Redis at once: the listing is
// never held whole in memory.
const listChunk = 1000

// listAttempts bounds the tries of one host's listing within a step.
// Dovecot 2.4.1 fails a large `user '*'` now and then (exit code 65; its
// log: "auth-worker: Aborted LIST request for *: Shutting down"), and a
// second try usually passes; see docs/sync.md. Tries are listPause apart,
// doubling: a Dovecot restarting as the sweep starts (local mode and
// Dovecot started together) is listed once it answers, within 7 s.
const listAttempts = 4

const listPause = time.Second

// retryList tells failures that may pass on another try from those that
// need an admin (credentials, a doveadm that does not understand us).
func retryList(err error) bool {
	var de *doveadm.Error
	if !errors.As(err, &de) {
		return false
	}
	switch de.Kind {
	case doveadm.KindTransport, doveadm.KindInternal:
		return true
	case doveadm.KindExitCode:
		return de.ExitCode == 65 || de.ExitCode == 75
	}
	return false
}

// maxBadNameLogs bounds the log lines about refused names per listing; the
// metric counts them all.
const maxBadNameLogs = 10

// storeError marks a failure of the store inside the listing callback, so
// it is told apart from a failure of doveadm.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// start begins a sweep, or reports the running one, and lists its users.
func (s *Sweeper) start(ctx context.Context, reason string) (Result, error) {
	began := time.Now()
	token := newToken()
	st, err := s.st.SweepBegin(ctx, newID(began), token, reason, s.o.LockTTL, s.claimTTL())
	if err != nil {
		return Result{}, err
	}
	if st.Decision == "running" {
		if !st.Listed.IsZero() {
			// Listed, and nobody has claimed its first batch: the
			// listing's continuation is on its way, or was lost with the
			// listing step's answer (this may be the Broker's redelivery
			// of the event that started it). Once no step has claimed
			// it for longer than the continuation takes, it was lost:
			// this request carries the sweep on. Before that, answered
			// 202, a redelivery would end the Broker's retries and leave
			// the sweep to its lock's expiry; the Broker tries again.
			if st.Now.Sub(st.Listed) <= s.chainSilence() {
				return Result{}, ErrBusy
			}
			s.log.Warn("the sweep's first continuation was lost after its listing; going on from its start", "sweep", st.ID,
				"listed", st.Listed)
			return Result{Outcome: Running, Sweep: st.ID, Next: &Cursor{Sweep: st.ID, Offset: 0}}, nil
		}
		s.log.Info("a sweep is running already; this request is covered by it", "sweep", st.ID, "started", st.Started, "reason", reason)
		return Result{Outcome: Running, Sweep: st.ID}, nil
	}
	if st.Abandoned != "" {
		switch st.Replaced {
		case "retry":
			// A retry sweep takes the failed and pending users only: it
			// does not cover a sweep that lists every user, which takes
			// them too and replaces it.
			s.m.finished.WithLabelValues("replaced").Inc()
			s.log.Info("a sweep that lists every user replaces the running retry sweep", "replaced", st.Abandoned, "sweep", st.ID, "reason", reason)
		case "asked":
			// An administrator's sweep retries the failed users at once,
			// which dovewarden's own sweeps leave until their retry is
			// due: it does not wait behind one.
			s.m.finished.WithLabelValues("replaced").Inc()
			s.log.Info("a sweep an administrator asked for replaces the running sweep of dovewarden's own", "replaced", st.Abandoned,
				"sweep", st.ID, "reason", reason)
		case "recovery":
			s.m.finished.WithLabelValues("abandoned").Inc()
			s.log.Info("the running sweep started before the recovery time (local mode's start, or a sweep of every user asked for): a new one replaces it",
				"abandoned", st.Abandoned, "sweep", st.ID)
		default:
			s.m.finished.WithLabelValues("abandoned").Inc()
			s.log.Warn("the previous sweep never finished (its continuation was lost); starting over", "abandoned", st.Abandoned, "sweep", st.ID)
		}
		if err := s.st.SweepDrop(ctx, st.Abandoned); err != nil {
			s.log.Warn("could not drop the abandoned sweep's candidates; they expire by themselves", "err", err)
		}
	}
	if st.Decision == "started" {
		s.m.started.Inc()
		s.log.Info("sweep started", "sweep", st.ID, "reason", reason, "hosts", len(s.sources))
	} else {
		reason = st.Reason // the sweep's own, not this request's
		s.log.Warn("the sweep's listing was cut off; listing again", "sweep", st.ID)
	}
	// A retry sweep lists no host: its candidates are the failed and
	// pending users Redis knows, whom every sweep takes.
	l := state.SweepListing{HostsJSON: "[]"}
	if reason != SweepReasonRetry {
		// Leave room after the listing to record it and answer.
		lctx, cancel := context.WithDeadline(ctx, began.Add(s.o.Budget-reserve(s.o.Budget)))
		defer cancel()
		list := s.list
		if s.o.List == ListKnown {
			list = s.listKnown
		}
		if l, err = list(ctx, lctx, st.ID); err != nil {
			s.release(token)
			return Result{}, err
		}
	}
	total, finished, err := s.st.SweepListed(ctx, st.ID, token, l, s.o.LockTTL, s.usersTTL())
	var replaced *state.SweepReplacedError
	if errors.As(err, &replaced) {
		// Its candidates were dropped, and what this listing wrote
		// since expires by itself (SweepAddUsers).
		s.log.Info("sweep replaced by a newer one while it listed its users; this listing is dropped, and the newer sweep goes on in its place",
			"sweep", st.ID, "replaced_by", replaced.By)
		return Result{Outcome: Stale, Sweep: st.ID}, nil
	}
	if errors.Is(err, state.ErrSweepLost) {
		s.log.Warn("the sweep's listing took longer than its claim; another invocation took over", "sweep", st.ID)
		return Result{Outcome: Lost, Sweep: st.ID}, nil
	}
	if err != nil {
		s.release(token)
		return Result{}, err
	}
	if finished {
		s.m.finished.WithLabelValues("completed").Inc()
		s.log.Info("sweep finished: nothing to sweep", "sweep", st.ID)
		return Result{Outcome: Finished, Sweep: st.ID}, nil
	}
	s.log.Info("sweep listed its candidates", "sweep", st.ID, "candidates", total, "listed", l.Listed, "bad_names", l.BadNames,
		"took", time.Since(began).Round(time.Millisecond))
	return Result{Outcome: Started, Sweep: st.ID, Next: &Cursor{Sweep: st.ID, Offset: 0}}, nil
}

// reserve is the part of a step's budget kept for recording it and
// answering.
func reserve(budget time.Duration) time.Duration { return min(2*time.Second, budget/5) }

// list streams every source's users into the sweep's candidates, all
// hosts at once, each until lctx ends: a host that does not answer must
// not keep the others from being listed. A host that cannot be listed (or
// not within lctx) is logged and counted, and the sweep goes on with the
// others and with the pending and failed users: those matter most. Only a
// failure of the store (reached with ctx, which outlives lctx, so that
// what was listed is recorded) is an error, and the cancellation of ctx,
// the step's request, which ends lctx too but is no host's failure.
func (s *Sweeper) list(ctx, lctx context.Context, id string) (state.SweepListing, error) {
	var l state.SweepListing
	names := make([]string, len(s.sources))
	errs := make([]error, len(s.sources))
	var mu sync.Mutex
	var logged atomic.Int64 // refused names logged, of every host
	var wg sync.WaitGroup
	for i, src := range s.sources {
		names[i] = src.Name
		wg.Go(func() {
			listed, bad, err := s.listHost(ctx, lctx, id, i, src, &logged)
			mu.Lock()
			l.Listed += listed
			l.BadNames += bad
			mu.Unlock()
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return l, err
	}
	b, err := json.Marshal(names)
	if err != nil {
		return l, fmt.Errorf("encode sweep hosts: %w", err)
	}
	l.HostsJSON = string(b)
	return l, nil
}

// listKnown streams the users Redis keeps a record of into the sweep's
// candidates, with no host (ListKnown); each request then goes to the
// host of the user's last change or dsync. It reads them until lctx
// ends, and a sweep cut short so sweeps what was read, as a host's
// listing cut short does; the next sweep reads from the start again
// (about 4 million records fit in the default budget: docs/sync.md). An
// error is one of the store, or the cancellation of ctx.
func (s *Sweeper) listKnown(ctx, lctx context.Context, id string) (state.SweepListing, error) {
	l := state.SweepListing{HostsJSON: "[]"}
	err := s.st.KnownUsers(lctx, listChunk, func(users []string) error {
		l.Listed += int64(len(users))
		if err := s.st.SweepAddUsers(ctx, id, -1, users, s.usersTTL()); err != nil {
			return &storeError{err}
		}
		return nil
	})
	var se *storeError
	switch {
	case errors.As(err, &se):
		return l, se.err
	case err != nil && ctx.Err() != nil:
		// The step's request was cancelled, not cut by its budget: see
		// listHost.
		return l, ctx.Err()
	case err != nil && lctx.Err() != nil:
		s.m.listFailures.WithLabelValues(knownLabel).Inc()
		s.log.Error("sweep: reading the users redis knows was cut short by the step's budget; sweeping what was read", "read", l.Listed, "err", err)
	case err != nil:
		return l, err
	}
	s.m.listed.WithLabelValues(knownLabel).Add(float64(l.Listed))
	return l, nil
}

// knownLabel is the host label of the users ListKnown reads from Redis.
const knownLabel = "known"

// listHost streams the users of the source with index i into the sweep's
// candidates, trying again a listing that may pass on another try. It
// returns the names listed and refused; the error is one of the store, or
// the cancellation of the step's request.
func (s *Sweeper) listHost(ctx, lctx context.Context, id string, i int, src Source, logged *atomic.Int64) (listed, bad int64, err error) {
	label := hostLabel(src.Name)
	buf := make([]string, 0, listChunk)
	flush := func() error {
		if err := s.st.SweepAddUsers(ctx, id, i, buf, s.usersTTL()); err != nil {
			return &storeError{err}
		}
		buf = buf[:0]
		return nil
	}
	visit := func(u string) error {
		listed++
		u, err := doveadm.NormalizeUser(u, s.o.Username)
		if err != nil {
			bad++
			if logged.Add(1) <= maxBadNameLogs {
				s.log.Warn("sweep: skipping a listed username doveadm must not get", "host", label, "err", err)
			}
			return nil
		}
		buf = append(buf, u)
		if len(buf) == listChunk {
			return flush()
		}
		return nil
	}
	for attempt := 1; attempt <= listAttempts; attempt++ {
		listed, bad = 0, 0 // an attempt that fails counts again
		err = s.lister.ListUsers(lctx, src.Endpoint, visit)
		var se *storeError
		if errors.As(err, &se) {
			return listed, bad, se.err
		}
		if err == nil || !retryList(err) || lctx.Err() != nil || attempt == listAttempts {
			break
		}
		pause := s.listPause << (attempt - 1)
		s.log.Warn("sweep: listing the users of a host failed; trying again", "host", label, "attempt", attempt, "in", pause, "err", err)
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-lctx.Done():
		}
		t.Stop()
	}
	if err != nil && ctx.Err() != nil {
		// The step's request was cancelled (a stop past its shutdown
		// timeout), not cut by its budget: the step fails and records
		// nothing, and the next sweep.requested lists again. No failure
		// of this host's, to count or alert on.
		return listed, bad, ctx.Err()
	}
	if ferr := flush(); ferr != nil {
		return listed, bad, ferr.(*storeError).err
	}
	s.m.skipped.WithLabelValues(SkipBadUser).Add(float64(bad))
	s.m.listed.WithLabelValues(label).Add(float64(listed))
	if err != nil {
		s.m.listFailures.WithLabelValues(label).Inc()
		msg := "sweep: listing the users of a host failed; sweeping the rest"
		if lctx.Err() != nil {
			msg = "sweep: listing the users of a host was cut short by the step's budget; sweeping what was listed"
		}
		args := []any{"host", label, "listed", listed, "err", err}
		if cannotIterate(err) {
			args = append(args, "hint", "if Dovecot logs \"Trying to iterate users, but userdbs don't support it\", its userdb cannot be listed, at any sweep: give it its iterate settings, or set --sweep-list known")
		}
		s.log.Error(msg, args...)
	}
	return listed, bad, nil
}

// cannotIterate tells a listing failure a userdb that cannot iterate
// gives: exit code 65 over the HTTP API, 75 from the CLI (Dovecot 2.3
// and 2.4).
func cannotIterate(err error) bool {
	var de *doveadm.Error
	return errors.As(err, &de) && de.Kind == doveadm.KindExitCode && (de.ExitCode == 65 || de.ExitCode == 75)
}

// hostLabel names a host in metrics and logs.
func hostLabel(name string) string {
	if name == "" {
		return "default"
	}
	return name
}
