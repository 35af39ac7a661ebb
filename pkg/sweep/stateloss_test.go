package sweep

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestIntegrationRedis_AfterRedisLostItsStateTheNextSweepSyncsEveryone:
// a real redis-server that loses its data (restarted without persistence,
// flushed) while a sweep runs and a user is pending. The running sweep's
// continuation is dropped, and the next sweep asks for a full sync of
// every listed user, the lost pending one among them: what
// docs/configuration.md ("Redis connection") promises. With periodic full
// syncs off nothing brings the lost pending user back.
func TestIntegrationRedis_AfterRedisLostItsStateTheNextSweepSyncsEveryone(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real redis-server")
	}
	for _, fullOff := range []bool{false, true} {
		o := testOptions()
		if fullOff {
			o.FullSyncInterval = 0
		}
		f := newFixture(t, o, "u1", "u2", "u3", "u4", "u5")
		f.useRealRedis(t)
		ctx := context.Background()
		for _, u := range []string{"u1", "u2", "u3", "u4", "u5"} {
			f.synced(t, u, time.Hour, true)
		}
		if err := f.st.MarkPending(ctx, "u4", "mail-a", f.now()); err != nil {
			t.Fatal(err)
		}
		first, err := f.sw.Step(ctx, SweepReasonSchedule, nil)
		if err != nil || first.Next == nil {
			t.Fatalf("start: %+v %v", first, err)
		}

		if err := f.rdb.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}

		r, err := f.sw.Step(ctx, "", first.Next)
		if err != nil || r.Outcome != Stale || r.Next != nil {
			t.Fatalf("the continuation after the loss: %+v %v, want it dropped", r, err)
		}
		f.snd.reqs = nil
		f.run(t)
		got := byUser(t, f.snd.all())
		if fullOff {
			if len(got) != 0 {
				t.Errorf("full syncs off: requests %v, want none (nothing is known to be due)", users(got))
			}
			continue
		}
		for _, u := range []string{"u1", "u2", "u3", "u4", "u5"} {
			if req, ok := got[u]; !ok || req.Reason != ReasonNever || !req.Full {
				t.Errorf("%s after the loss: %+v (requested %v), want a full sync, reason never", u, req, ok)
			}
		}
	}
}

// TestStep_CandidatesGoneLeaveTheSweepUnfinished: the sweep's candidate
// list disappears under it (a Redis with an evicting maxmemory-policy
// takes keys with a TTL first, the list among them; or it expired under a
// sweep taken back late). The candidates after the position were never
// examined, so the sweep must not count as completed (which would also
// hide it from DovewardenSweepOverdue): it stops unfinished, and the next
// sweep replaces it as abandoned and requests its users.
func TestStep_CandidatesGoneLeaveTheSweepUnfinished(t *testing.T) {
	f, first, batch := sweepWithALostContinuation(t)
	ctx := context.Background()
	requested := len(f.snd.all())
	if err := f.rdb.Del(ctx, state.SweepUsersKey(first.Sweep)).Err(); err != nil {
		t.Fatal(err)
	}

	r, err := f.sw.Step(ctx, "", batch.Next)

	if err != nil || r.Outcome == Finished || r.Next != nil || r.Examined != 0 {
		t.Fatalf("a step without candidates: %+v %v, want it to stop without finishing or examining", r, err)
	}
	if st := f.status(t); !st.Finished.IsZero() || !st.LastCompletedEnd.IsZero() {
		t.Errorf("the sweep counts as finished: %+v", st)
	}
	if got := testutil.ToFloat64(f.sw.m.finished.WithLabelValues("completed")); got != 0 {
		t.Errorf("completed sweeps %v", got)
	}
	f.mr.FastForward(f.opts.LockTTL + time.Second)
	f.run(t)
	if got := testutil.ToFloat64(f.sw.m.finished.WithLabelValues("abandoned")); got != 1 {
		t.Errorf("abandoned sweeps %v, want the one without candidates", got)
	}
	// The first batch's full syncs are not asked again within the
	// interval; every user it did not reach is.
	if got := len(f.snd.all()) - requested; requested == 0 || got != 7-requested {
		t.Errorf("the next sweep requested %d users, want the %d the first did not reach", got, 7-requested)
	}
}

// TestStep_CandidatesGoneBeforeTheFirstBatchDoNotBlockSweepsForever: the
// listing's continuation is lost and the candidate list disappears
// (evicted) before any batch. Each sweep.requested after that (the
// PingSource's retry sweeps come every 5 minutes, the default lock TTL)
// carries the sweep on from its start, and the batch that finds no
// candidates stops it. That batch's claim must not keep the dead sweep's
// lock alive: the next sweep.requested after the lock TTL has to start a
// new sweep, not carry on the dead one again.
func TestStep_CandidatesGoneBeforeTheFirstBatchDoNotBlockSweepsForever(t *testing.T) {
	o := testOptions()
	o.LockTTL = time.Minute
	f := newFixture(t, o, "u1", "u2", "u3", "u4", "u5", "u6", "u7")
	ctx := context.Background()
	first, err := f.sw.Step(ctx, "schedule", nil)
	if err != nil || first.Next == nil {
		t.Fatalf("start: %+v %v", first, err)
	}
	// first.Next is lost, and the candidates are evicted.
	if err := f.rdb.Del(ctx, state.SweepUsersKey(first.Sweep)).Err(); err != nil {
		t.Fatal(err)
	}
	t0 := f.now()
	every := o.LockTTL - 10*time.Second
	var started *Result
	for i := 1; i <= 6 && started == nil; i++ {
		f.mr.FastForward(every)
		f.mr.SetTime(t0.Add(time.Duration(i) * every))
		r, err := f.sw.Step(ctx, "schedule", nil)
		if err != nil {
			t.Fatalf("sweep.requested %d: %v", i, err)
		}
		if r.Outcome == Started && r.Sweep != first.Sweep {
			started = &r
			break
		}
		// The Broker brings the answer's continuation back.
		for c := r.Next; c != nil; {
			res, err := f.sw.Step(ctx, "", c)
			if err != nil {
				t.Fatalf("continuation %+v: %v", c, err)
			}
			c = res.Next
		}
	}
	if started == nil {
		t.Fatalf("after %s of sweep.requested events every %s, sweep %s without candidates still blocks every new sweep (%+v)",
			6*every, every, first.Sweep, f.status(t))
	}
	if got := testutil.ToFloat64(f.sw.m.finished.WithLabelValues("abandoned")); got != 1 {
		t.Errorf("abandoned sweeps %v, want the one without candidates", got)
	}
	f.continueFrom(t, started.Next)
	if got := users(byUser(t, f.snd.all())); len(got) != 7 {
		t.Errorf("requested %q, want the 7 users the lost sweep never reached", got)
	}
}
