package sweep

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// pick is a chosen request and its position in the candidate list.
type pick struct {
	pos int64
	req Request
}

// batch does the step at cursor c: examine candidates from its offset until
// a batch of requests is chosen (or the scan limit or the scan's share of
// the budget is reached), send them, record the new offset, pause, and
// return the continuation.
func (s *Sweeper) batch(ctx context.Context, c Cursor) (Result, error) {
	began := time.Now()
	deadline := began.Add(s.o.Budget)
	token := newToken()
	b, err := s.st.SweepClaim(ctx, c.Sweep, c.Offset, token, s.o.LockTTL, s.claimTTL())
	if err != nil {
		return Result{}, err
	}
	switch b.Decision {
	case "stale":
		s.log.Info("sweep continuation for a sweep that is over or was replaced; dropped", "sweep", c.Sweep, "offset", c.Offset)
		return Result{Outcome: Stale, Sweep: c.Sweep}, nil
	case "duplicate":
		if b.Offset > c.Offset && !b.ClaimHeld && b.Now.Sub(b.LastBatch) > s.chainSilence() {
			// The batch was done, but no step has worked on the sweep
			// since for longer than a step and its pause take: the
			// continuation the batch answered with was lost. This
			// redelivery carries the sweep on from where it is.
			s.log.Warn("sweep continuation lost after its batch was recorded; going on from the sweep's position", "sweep", c.Sweep,
				"offset", b.Offset, "last_batch", b.LastBatch)
			return Result{Outcome: Duplicate, Sweep: c.Sweep, Next: &Cursor{Sweep: c.Sweep, Offset: b.Offset}}, nil
		}
		if b.Offset > c.Offset && !b.ClaimHeld && b.LastFrom == c.Offset {
			// This event's batch is the last one recorded, and nobody
			// has claimed the next: its continuation is on its way, or
			// was lost with the answer (the step died after recording
			// the batch, and the Broker delivers the event again, 5 s
			// later with the sweep Trigger's delivery). Too soon to tell;
			// dropped, it would end the Broker's retries and leave a
			// lost continuation to the lock's expiry. The Broker tries
			// again later: by then the next batch is claimed or recorded
			// (dropped), or the chain is silent (carried on).
			return Result{}, ErrBusy
		}
		s.log.Info("sweep continuation for a batch already done (a redelivery); dropped", "sweep", c.Sweep, "offset", c.Offset)
		return Result{Outcome: Duplicate, Sweep: c.Sweep}, nil
	case "busy":
		return Result{}, ErrBusy
	}
	var hosts []string
	_ = json.Unmarshal([]byte(b.HostsJSON), &hosts) // written by list; a bad value only loses the listed host
	r, err := s.scan(ctx, c, b, hosts, began.Add(s.o.Budget/3))
	if err != nil {
		s.release(token)
		return Result{}, err
	}
	if r.gone {
		s.release(token)
		// Nothing can carry this sweep on: give up its lock, so the next
		// sweep.requested replaces it. Kept until its TTL, every request
		// that carried it on (its first continuation lost, no batch
		// recorded) would claim it again, renewing the lock, and no new
		// sweep would ever start.
		current, err := s.st.SweepStop(ctx, c.Sweep)
		switch {
		case err != nil:
			s.log.Warn("could not release the lock of the sweep without candidates; it expires by itself", "sweep", c.Sweep, "err", err)
		case current != "" && current != c.Sweep:
			// Another sweep started after this step claimed the
			// batch, and dropped this one's candidates: nothing was
			// lost, and the newer sweep goes on in its place.
			s.log.Info("sweep replaced by a newer one while this step read its candidates, which the newer one dropped; this sweep ends here",
				"sweep", c.Sweep, "replaced_by", current, "offset", r.next, "total", b.Total)
			return Result{Outcome: Stale, Sweep: c.Sweep}, nil
		}
		s.log.Warn("sweep candidates are gone (expired, or evicted by Redis); the sweep stops unfinished, and the next one replaces it",
			"sweep", c.Sweep, "offset", r.next, "total", b.Total)
		return Result{Outcome: Lost, Sweep: c.Sweep}, nil
	}
	// Sending may use the budget up to the pause and a reserve.
	sctx, cancel := context.WithDeadline(ctx, deadline.Add(-s.o.BatchInterval-reserve(s.o.Budget)))
	sent, refused := s.send(sctx, r.picks)
	cancel()
	next := r.next
	counts := map[string]int64{}
	var full, askedFor []string
	requested := 0
	for i, p := range r.picks {
		if !sent[i] {
			// Everything from the first unsent request on is examined
			// again by the next step; requests after it that did go out
			// go out again then, under the same event id.
			next = min(next, p.pos)
			continue
		}
		requested++
		counts["requested_"+string(p.req.Reason)]++
		s.m.requested.WithLabelValues(string(p.req.Reason)).Inc()
		if p.req.Full {
			full = append(full, p.req.User)
		}
		if p.req.Reason == ReasonFailed {
			askedFor = append(askedFor, p.req.User)
		}
	}
	if unsent := len(r.picks) - requested; unsent > 0 {
		counts["send_failures"] += int64(refused)
		s.m.sendFailures.Add(float64(refused))
		s.log.Warn("sweep: the Broker did not take every request; the rest waits for the next batch", "sweep", c.Sweep, "refused", refused, "unsent", unsent)
	}
	// Candidates from next on are examined again by the next step: only
	// the ones before count now.
	skipped := map[string]int64{}
	for _, sk := range r.skips {
		if sk.pos < next {
			skipped[sk.reason]++
			counts["skipped_"+sk.reason]++
		}
	}
	// The requests went out: the batch is recorded even if the step's
	// request was cancelled meanwhile (a stop past its shutdown timeout,
	// which cuts the sends short), on a context of its own. Left
	// unrecorded, the Broker's redelivery would ask for every request
	// again, and the full syncs again after their first ran, since the
	// record that they were asked for would be lost too.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	finished, err := s.st.SweepCommit(rctx, state.SweepCommitArgs{
		ID: c.Sweep, Token: token, From: c.Offset, To: next, Counts: counts, FullRequested: full, Asked: askedFor,
		FullSyncInterval: s.o.FullSyncInterval, FailedRetryInterval: s.o.FailedRetryInterval,
		LockTTL: s.o.LockTTL, UsersTTL: s.usersTTL(),
	})
	rcancel()
	var replaced *state.SweepReplacedError
	if errors.As(err, &replaced) {
		// The full syncs and retries it asked for are recorded all the
		// same (SweepCommit): the newer sweep does not ask them again.
		s.log.Info("sweep replaced by a newer one during this batch; the batch is not recorded, its requests stand, and the newer sweep goes on in its place",
			"sweep", c.Sweep, "replaced_by", replaced.By, "offset", c.Offset, "requested", requested)
		return Result{Outcome: Stale, Sweep: c.Sweep, Requested: requested}, nil
	}
	if errors.Is(err, state.ErrSweepLost) {
		s.log.Warn("sweep batch not recorded: it took longer than its claim and another invocation took over", "sweep", c.Sweep, "offset", c.Offset)
		return Result{Outcome: Lost, Sweep: c.Sweep, Requested: requested}, nil
	}
	if err != nil {
		s.release(token)
		return Result{}, err
	}
	s.m.batches.Inc()
	s.m.examined.Add(float64(next - c.Offset))
	for why, n := range skipped {
		s.m.skipped.WithLabelValues(why).Add(float64(n))
	}
	res := Result{Sweep: c.Sweep, Requested: requested, Examined: int(next - c.Offset)}
	s.log.Debug("sweep batch", "sweep", c.Sweep, "offset", c.Offset, "next", next, "total", b.Total, "requested", requested)
	if finished {
		s.m.finished.WithLabelValues("completed").Inc()
		s.log.Info("sweep finished", "sweep", c.Sweep, "candidates", b.Total, "started", b.Started)
		res.Outcome = Finished
		return res, nil
	}
	// Pace the sweep inside this request: the next batch only arrives
	// after this answer.
	if wait := min(s.o.BatchInterval, time.Until(deadline)); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	res.Outcome, res.Next = Batched, &Cursor{Sweep: c.Sweep, Offset: next}
	return res, nil
}

// recordTimeout bounds the recording of a batch whose step's request was
// cancelled: longer than go-redis's default wait for a connection.
const recordTimeout = 5 * time.Second

// scanned is what scan found.
type scanned struct {
	picks []pick
	// next is the position after the last candidate examined.
	next int64
	// gone: the candidate list ended before the sweep's total.
	gone bool
	// skips are the skipped candidates' positions and reasons.
	skips []skip
}

type skip struct {
	pos    int64
	reason string
}

// scan examines candidates from c.Offset, a chunk at a time (one read of
// the list and one pipelined read of the users' state each), and chooses
// up to BatchSize requests. It stops at the end of the list, at the scan
// limit, or at until.
func (s *Sweeper) scan(ctx context.Context, c Cursor, b state.SweepBatch, hosts []string, until time.Time) (scanned, error) {
	chunk := int64(min(max(s.o.BatchSize, 100), 1000))
	r := scanned{next: c.Offset}
	for r.next < b.Total && len(r.picks) < s.o.BatchSize && r.next-c.Offset < int64(s.o.ScanLimit) && time.Now().Before(until) {
		entries, err := s.st.SweepUsers(ctx, c.Sweep, r.next, min(chunk, b.Total-r.next))
		if err != nil {
			return r, err
		}
		if len(entries) == 0 {
			// The list is gone: it expired under a sweep that was taken
			// back late, or a Redis that evicts keys (maxmemory-policy)
			// deleted it. The candidates from here on were never
			// examined, so the sweep did not complete: it is left
			// unfinished, and the next sweep replaces it (abandoned)
			// and lists afresh.
			r.gone = true
			return r, nil
		}
		users := make([]string, len(entries))
		for i, e := range entries {
			users[i] = e.User
		}
		facts, err := s.st.SweepFacts(ctx, users)
		if err != nil {
			return r, err
		}
		var forget []string
		for i, e := range entries {
			if facts[i].Excluded && (facts[i].Pending || facts[i].Failed) {
				forget = append(forget, e.User)
			}
		}
		if _, err := s.st.ForgetExcluded(ctx, forget); err != nil {
			return r, err
		}
		for i, e := range entries {
			req, why := decide(e, facts[i], b.Now, s.o, hosts, Asked(b.Reason))
			switch {
			case req != nil:
				// On the clock of dsync starts, not TIME: a request is
				// covered only by a dsync that started after it.
				req.Sweep, req.Time = c.Sweep, b.Stamp
				r.picks = append(r.picks, pick{pos: r.next, req: *req})
			case why != "":
				r.skips = append(r.skips, skip{pos: r.next, reason: why})
			}
			r.next++
			if len(r.picks) == s.o.BatchSize {
				break
			}
		}
	}
	return r, nil
}

// send hands the picks to the Broker, SendParallel at a time, and reports
// which went out and how many the Broker refused. Once one fails the rest
// are not tried (those count as unsent, not refused): the batch ends at
// the first unsent pick anyway.
func (s *Sweeper) send(ctx context.Context, picks []pick) (sent []bool, refused int) {
	sent = make([]bool, len(picks))
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, s.o.SendParallel)
	var wg sync.WaitGroup
	for i := range picks {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := s.snd.Send(ctx, picks[i].req); err != nil {
				if ctx.Err() == nil {
					s.log.Warn("sweep: could not send a replication request", "user", picks[i].req.User, "err", err)
					mu.Lock()
					refused++
					mu.Unlock()
				}
				cancel()
				return
			}
			sent[i] = true
		}()
	}
	wg.Wait()
	return sent, refused
}
