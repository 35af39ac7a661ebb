package sweep

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

func TestStep_RequestsEachCandidateOnceWithItsReason(t *testing.T) { testReasons(t, false) }

// The same on a real Redis: its Lua is not miniredis's.
func TestIntegrationRedis_RequestsEachCandidateOnceWithItsReason(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real redis-server")
	}
	testReasons(t, true)
}

func testReasons(t *testing.T, realRedis bool) {
	f := newFixture(t, testOptions(), "fresh", "pending", "failed", "failing", "stale", "never", "excluded", "busy", "-bad", "a*b", "tab\tname")
	if realRedis {
		f.useRealRedis(t)
	}
	ctx := context.Background()
	for _, u := range []string{"fresh", "pending", "failed", "failing", "excluded", "busy"} {
		f.synced(t, u, time.Hour, true)
	}
	f.synced(t, "stale", 25*time.Hour, true)
	_ = f.st.MarkPending(ctx, "pending", "mail-b", f.now().Add(-time.Minute))
	_ = f.st.MarkPending(ctx, "gone-from-listing", "", f.now().Add(-time.Minute)) // pending, no host lists it
	f.failed(t, "failed", 10*time.Minute)
	f.failed(t, "failing", time.Minute)
	_ = f.st.Exclude(ctx, "excluded")
	_ = f.st.MarkPending(ctx, "excluded", "mail-a", f.now())
	f.rdb.Set(ctx, state.LockKey("busy"), "someone", time.Minute)
	_ = f.st.MarkPending(ctx, "busy", "mail-a", f.now())

	steps := f.run(t)

	got := byUser(t, f.snd.all())
	want := map[string]struct {
		reason Reason
		full   bool
		host   string
	}{
		"pending":           {ReasonPending, false, "mail-b"},
		"gone-from-listing": {ReasonPending, true, ""}, // never synced: its full sync is due too
		"failed":            {ReasonFailed, false, "mail-a"},
		"stale":             {ReasonStale, true, "mail-a"},
		"never":             {ReasonNever, true, "mail-a"},
	}
	if len(got) != len(want) {
		t.Errorf("requested %v, want %d users", users(got), len(want))
	}
	for u, w := range want {
		r, ok := got[u]
		if !ok || r.Reason != w.reason || r.Full != w.full || r.Host != w.host || r.Sweep != steps[0].Sweep || r.Time.IsZero() {
			t.Errorf("%s: %+v, want %+v", u, r, w)
		}
	}
	if steps[0].Outcome != Started || steps[len(steps)-1].Outcome != Finished || len(steps) != 3 {
		t.Errorf("steps %+v", steps)
	}
	st := f.status(t)
	if st.Running || st.Finished.IsZero() || st.Total != 9 || st.Offset != 9 || st.Listed != 11 ||
		st.LastCompletedEnd.IsZero() || st.LastCompletedStart.IsZero() {
		t.Errorf("status %+v", st)
	}
	for k, n := range map[string]int64{"requested_pending": 2, "requested_failed": 1, "requested_stale": 1, "requested_never": 1,
		"skipped_bad_user": 3, "skipped_excluded": 1, "skipped_in_progress": 1, "skipped_retry_not_due": 1} {
		if st.Counts[k] != n {
			t.Errorf("status counts[%s] = %d, want %d (%v)", k, st.Counts[k], n, st.Counts)
		}
	}
	m := f.sw.m
	if testutil.ToFloat64(m.started) != 1 || testutil.ToFloat64(m.finished.WithLabelValues("completed")) != 1 ||
		testutil.ToFloat64(m.requested.WithLabelValues("pending")) != 2 || testutil.ToFloat64(m.skipped.WithLabelValues(SkipBadUser)) != 3 ||
		testutil.ToFloat64(m.listed.WithLabelValues("mail-a")) != 11 || testutil.ToFloat64(m.examined) != 9 ||
		testutil.ToFloat64(m.batches) != float64(len(steps)-1) {
		t.Errorf("metrics: started %v finished %v pending %v bad %v listed %v examined %v batches %v",
			testutil.ToFloat64(m.started), testutil.ToFloat64(m.finished.WithLabelValues("completed")),
			testutil.ToFloat64(m.requested.WithLabelValues("pending")), testutil.ToFloat64(m.skipped.WithLabelValues(SkipBadUser)),
			testutil.ToFloat64(m.listed.WithLabelValues("mail-a")), testutil.ToFloat64(m.examined), testutil.ToFloat64(m.batches))
	}
	// The sweep's own keys are gone; the full-sync record stays.
	if n, _ := f.rdb.Exists(ctx, state.SweepLockKey, state.SweepClaimKey, state.SweepUsersKey(steps[0].Sweep)).Result(); n != 0 {
		t.Errorf("%d sweep keys left", n)
	}
	if n, _ := f.rdb.ZCard(ctx, state.SweepFullKey).Result(); n != 3 {
		t.Errorf("%d full-sync records, want 3", n)
	}
}

func TestStep_ASecondSweepRequestsOnlyWhatIsStillDue(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "u3")
	f.run(t)
	if n := len(f.snd.all()); n != 3 {
		t.Fatalf("first sweep: %d requests", n)
	}
	// Nothing ran the requested syncs: the full ones are not asked again
	// within the interval (Dovecot's last_full_sync rule)...
	f.run(t)
	if n := len(f.snd.all()); n != 3 {
		t.Errorf("second sweep asked again: %d requests", n)
	}
	// ...but one interval later they are.
	f.mr.SetTime(time.Now().Add(25 * time.Hour))
	f.run(t)
	if n := len(f.snd.all()); n != 6 {
		t.Errorf("a day later: %d requests, want 6", n)
	}
}

func TestStep_OneSweepAtATime(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "u3", "u4", "u5")
	ctx := context.Background()
	first, err := f.sw.Step(ctx, "schedule", nil)
	if err != nil || first.Outcome != Started || first.Next == nil {
		t.Fatalf("first: %+v %v", first, err)
	}

	// While the first batch is not yet claimed: the Broker tries again.
	if _, err := f.sw.Step(ctx, "schedule", nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("second before the first's first batch: %v, want ErrBusy", err)
	}
	batch, err := f.sw.Step(ctx, "", first.Next)
	if err != nil || batch.Next == nil {
		t.Fatalf("first batch: %+v %v", batch, err)
	}

	second, err := f.sw.Step(ctx, "schedule", nil)

	if err != nil || second.Outcome != Running || second.Next != nil || second.Sweep != first.Sweep {
		t.Fatalf("second while the first runs: %+v %v", second, err)
	}
	if f.dove.ListCalls() != 1 {
		t.Errorf("listed %d times", f.dove.ListCalls())
	}
	// The first goes on to its end; then a new one may start.
	c := batch.Next
	for c != nil {
		res, err := f.sw.Step(ctx, "", c)
		if err != nil {
			t.Fatal(err)
		}
		c = res.Next
	}
	if third, _ := f.sw.Step(ctx, "schedule", nil); third.Outcome != Started || third.Sweep == first.Sweep {
		t.Errorf("after the first finished: %+v", third)
	}
}

// sweepWithALostContinuation starts a sweep of 7 users (a lock TTL of a
// minute) and does its first batch, whose continuation is then lost: it
// returns the fixture, the start's result and the batch's.
func sweepWithALostContinuation(t *testing.T) (*fixture, Result, Result) {
	t.Helper()
	o := testOptions()
	o.LockTTL = time.Minute
	f := newFixture(t, o, "u1", "u2", "u3", "u4", "u5", "u6", "u7")
	first, _ := f.sw.Step(context.Background(), "schedule", nil)
	batch, err := f.sw.Step(context.Background(), "", first.Next)
	if err != nil || batch.Next == nil {
		t.Fatalf("batch: %+v %v", batch, err)
	}
	return f, first, batch
}

// continueFrom feeds the sweep's continuations back from c, as the Broker
// does, until there is none.
func (f *fixture) continueFrom(t *testing.T, c *Cursor) {
	t.Helper()
	for c != nil {
		res, err := f.sw.Step(context.Background(), "", c)
		if err != nil {
			t.Fatal(err)
		}
		c = res.Next
	}
}

// TestStep_ARedeliveryCarriesOnASweepWhoseContinuationWasLost: a batch
// recorded, and the continuation it answered with lost (a reply dropped
// after the commit). A redelivery of the event before it is answered 503
// (tried again later) while a chain may still be alive; once no step has
// worked on the sweep for longer than a step takes, it carries the sweep
// on from its position, instead of leaving the rest to the next sweep.
func TestStep_ARedeliveryCarriesOnASweepWhoseContinuationWasLost(t *testing.T) {
	f, first, batch := sweepWithALostContinuation(t)
	ctx := context.Background()
	// batch.Next is lost; the Broker delivers first.Next again.
	if r, err := f.sw.Step(ctx, "", first.Next); !errors.Is(err, ErrBusy) {
		t.Fatalf("a redelivery at once: %+v %v; want ErrBusy", r, err)
	}
	f.mr.SetTime(time.Now().Add(f.sw.chainSilence() + time.Second))
	r, err := f.sw.Step(ctx, "", first.Next)
	if err != nil || r.Next == nil || *r.Next != *batch.Next {
		t.Fatalf("a redelivery after the chain went silent: %+v %v; want it to go on at %+v", r, err, batch.Next)
	}
	f.continueFrom(t, r.Next)
	if st, _ := f.st.SweepStatus(ctx); st.Running || st.Finished.IsZero() {
		t.Errorf("sweep %+v: want it finished", st)
	}
}

// TestStep_TheBrokersRetriesCarryOnASweepWhoseContinuationWasLost: the
// step that did a batch dies after recording it (its answer, the
// continuation, is lost with it), and the Broker delivers the event again
// on the sweep Trigger's schedule: 5, 10 and 20 s apart, until an answer
// that is not 5xx. The first redelivery comes before a living chain would
// surely have claimed the next batch; answered 202 (dropped) it ended the
// Broker's retries, and the sweep stood still until its lock expired and
// the next sweep replaced it, unfinished.
func TestStep_TheBrokersRetriesCarryOnASweepWhoseContinuationWasLost(t *testing.T) {
	f, first, batch := sweepWithALostContinuation(t)
	ctx := context.Background()
	t0 := f.now()
	var next *Cursor
	for _, after := range []time.Duration{5 * time.Second, 15 * time.Second, 35 * time.Second} {
		f.mr.SetTime(t0.Add(after))
		r, err := f.sw.Step(ctx, "", first.Next)
		if errors.Is(err, ErrBusy) {
			continue // 503: the Broker tries again
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Next == nil {
			t.Fatalf("redelivery %s after the batch: %+v, answered without a continuation: the Broker stops there and the sweep waits for its lock to expire", after, r)
		}
		next = r.Next
		break
	}
	if next == nil || *next != *batch.Next {
		t.Fatalf("after the Broker's retries: continuation %+v, want %+v", next, batch.Next)
	}
	f.continueFrom(t, next)
	if st := f.status(t); st.Running || st.Finished.IsZero() {
		t.Errorf("sweep %+v: want it finished", st)
	}
}

// TestStep_ADuplicateBesideALivingChainIsDropped: a continuation delivered
// twice while the chain goes on is answered 503 as long as the batch after
// it is neither claimed nor recorded, and dropped (202) once it is; no
// request goes out twice.
func TestStep_ADuplicateBesideALivingChainIsDropped(t *testing.T) {
	f, first, batch := sweepWithALostContinuation(t)
	ctx := context.Background()
	sent := len(f.snd.all())
	if _, err := f.sw.Step(ctx, "", first.Next); !errors.Is(err, ErrBusy) {
		t.Fatalf("a duplicate while the next batch is on its way: %v, want ErrBusy", err)
	}
	// The chain goes on: the next batch is claimed...
	f.rdb.Set(ctx, state.SweepClaimKey, "next-step", time.Minute)
	if r, err := f.sw.Step(ctx, "", first.Next); err != nil || r.Outcome != Duplicate || r.Next != nil {
		t.Errorf("a duplicate while the next batch is claimed: %+v %v, want it dropped", r, err)
	}
	f.rdb.Del(ctx, state.SweepClaimKey)
	// ...and recorded.
	if r, err := f.sw.Step(ctx, "", batch.Next); err != nil || r.Outcome != Batched {
		t.Fatalf("the next batch: %+v %v", r, err)
	}
	sent2 := len(f.snd.all())
	if r, err := f.sw.Step(ctx, "", first.Next); err != nil || r.Outcome != Duplicate || r.Next != nil {
		t.Errorf("a duplicate after the next batch was recorded: %+v %v, want it dropped", r, err)
	}
	if len(f.snd.all()) != sent2 || sent2 <= sent {
		t.Errorf("requests %d, %d, %d: a duplicate sent some", sent, sent2, len(f.snd.all()))
	}
}

// TestStep_TheBrokersRetriesCarryOnASweepWhoseFirstContinuationWasLost:
// the step that listed a sweep dies after recording the listing (its
// answer, the first continuation, is lost with it), and the Broker
// delivers the sweep.requested again on the sweep Trigger's schedule (5,
// 10 and 20 s apart, until an answer that is not 5xx). Answered 202
// (covered by the running sweep), it ended the Broker's retries, and the
// sweep stood still until its lock expired; the next sweep.requested then
// replaced it, on Knative most likely the retry sweep, which lists no
// host, so the listed users' periodic full syncs waited another hour.
func TestStep_TheBrokersRetriesCarryOnASweepWhoseFirstContinuationWasLost(t *testing.T) {
	o := testOptions()
	o.LockTTL = time.Minute
	f := newFixture(t, o, "u1", "u2", "u3", "u4", "u5", "u6", "u7")
	ctx := context.Background()
	first, err := f.sw.Step(ctx, "schedule", nil)
	if err != nil || first.Next == nil {
		t.Fatalf("start: %+v %v", first, err)
	}
	// first.Next is lost.
	t0 := f.now()
	var next *Cursor
	for _, after := range []time.Duration{5 * time.Second, 15 * time.Second, 35 * time.Second} {
		f.mr.SetTime(t0.Add(after))
		r, err := f.sw.Step(ctx, "schedule", nil)
		if errors.Is(err, ErrBusy) {
			continue // 503: the Broker tries again
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Next == nil {
			t.Fatalf("redelivery %s after the listing: %+v, answered without a continuation: the Broker stops there and the sweep waits for its lock to expire", after, r)
		}
		next = r.Next
		break
	}
	if next == nil || *next != *first.Next {
		t.Fatalf("after the Broker's retries: continuation %+v, want %+v", next, first.Next)
	}
	f.continueFrom(t, next)
	if st := f.status(t); st.Running || st.Finished.IsZero() || st.ID != first.Sweep {
		t.Errorf("sweep %+v: want %s finished", st, first.Sweep)
	}
	if got := len(byUser(t, f.snd.all())); got != 7 {
		t.Errorf("%d users requested, want 7", got)
	}
}

// TestStep_ASweepRequestBesideALivingFirstContinuationIsCovered: a
// sweep.requested that comes while the listing's continuation is on its
// way is answered 503 (tried again later), and covered (202) once the
// first batch is claimed or recorded; it never starts a second chain.
func TestStep_ASweepRequestBesideALivingFirstContinuationIsCovered(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "u3", "u4", "u5", "u6", "u7")
	ctx := context.Background()
	first, _ := f.sw.Step(ctx, "schedule", nil)
	if _, err := f.sw.Step(ctx, "schedule", nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("while the first continuation is on its way: %v, want ErrBusy", err)
	}
	f.rdb.Set(ctx, state.SweepClaimKey, "first-batch", time.Minute)
	if r, err := f.sw.Step(ctx, "schedule", nil); err != nil || r.Outcome != Running || r.Next != nil {
		t.Errorf("while the first batch is claimed: %+v %v, want it covered", r, err)
	}
	f.rdb.Del(ctx, state.SweepClaimKey)
	if _, err := f.sw.Step(ctx, "", first.Next); err != nil {
		t.Fatal(err)
	}
	if r, err := f.sw.Step(ctx, "schedule", nil); err != nil || r.Outcome != Running || r.Next != nil {
		t.Errorf("after the first batch: %+v %v, want it covered", r, err)
	}
}

func TestStep_LostContinuationStopsBlockingAfterTheLockTTL(t *testing.T) {
	f, first, batch := sweepWithALostContinuation(t)
	o := f.opts
	ctx := context.Background()
	// batch.Next is lost. Within the TTL the sweep still counts as running.
	if r, _ := f.sw.Step(ctx, "schedule", nil); r.Outcome != Running {
		t.Fatalf("within the TTL: %+v", r)
	}
	f.mr.FastForward(o.LockTTL + time.Second)

	r, err := f.sw.Step(ctx, "schedule", nil)

	if err != nil || r.Outcome != Started || r.Sweep == first.Sweep {
		t.Fatalf("after the TTL: %+v %v", r, err)
	}
	if got := testutil.ToFloat64(f.sw.m.finished.WithLabelValues("abandoned")); got != 1 {
		t.Errorf("abandoned sweeps %v", got)
	}
	if n, _ := f.rdb.Exists(ctx, state.SweepUsersKey(first.Sweep)).Result(); n != 0 {
		t.Error("the abandoned sweep's candidates were kept")
	}
	// The lost continuation, delivered late after all, changes nothing.
	before := len(f.snd.all())
	if late, err := f.sw.Step(ctx, "", batch.Next); err != nil || late.Outcome != Stale || len(f.snd.all()) != before {
		t.Errorf("late continuation: %+v %v", late, err)
	}
}

func TestStep_LateContinuationTakesBackAnExpiredLockIfNoSweepReplacedIt(t *testing.T) {
	o := testOptions()
	o.LockTTL = time.Minute
	f := newFixture(t, o, "u1", "u2", "u3", "u4", "u5", "u6", "u7")
	ctx := context.Background()
	first, _ := f.sw.Step(ctx, "schedule", nil)
	f.mr.FastForward(o.LockTTL + time.Second) // the continuation took long

	res, err := f.sw.Step(ctx, "", first.Next)

	if err != nil || res.Outcome != Batched {
		t.Fatalf("%+v %v", res, err)
	}
	if r, _ := f.sw.Step(ctx, "schedule", nil); r.Outcome != Running {
		t.Errorf("the lock was not taken back: %+v", r)
	}
}

func TestStep_DuplicateContinuationIsDroppedOrRetried(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "u3", "u4", "u5", "u6", "u7")
	ctx := context.Background()
	first, _ := f.sw.Step(ctx, "schedule", nil)
	// Another invocation holds the batch right now: the Broker must try
	// again later (503), not drop the continuation.
	f.rdb.Set(ctx, state.SweepClaimKey, "other-invocation", time.Minute)
	if _, err := f.sw.Step(ctx, "", first.Next); !errors.Is(err, ErrBusy) {
		t.Fatalf("claimed batch: %v", err)
	}
	f.rdb.Del(ctx, state.SweepClaimKey)
	res, err := f.sw.Step(ctx, "", first.Next)
	if err != nil || res.Outcome != Batched {
		t.Fatalf("batch: %+v %v", res, err)
	}
	// Redelivered before the next batch is claimed: tried again later.
	if _, err := f.sw.Step(ctx, "", first.Next); !errors.Is(err, ErrBusy) {
		t.Fatalf("redelivered before the next batch: %v, want ErrBusy", err)
	}
	if _, err := f.sw.Step(ctx, "", res.Next); err != nil {
		t.Fatal(err)
	}
	sent := len(f.snd.all())

	dup, err := f.sw.Step(ctx, "", first.Next)

	if err != nil || dup.Outcome != Duplicate || dup.Next != nil || len(f.snd.all()) != sent {
		t.Errorf("redelivered continuation: %+v %v, %d requests (was %d)", dup, err, len(f.snd.all()), sent)
	}
}

func TestStep_ListingCutOffIsListedAgain(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2")
	ctx := context.Background()
	// An invocation began a sweep and died while listing.
	if _, err := f.st.SweepBegin(ctx, "dead-listing", "tok", "schedule", time.Hour, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if r, _ := f.sw.Step(ctx, "schedule", nil); r.Outcome != Running {
		t.Fatalf("while its claim lives: %+v", r)
	}
	f.mr.FastForward(31 * time.Second)

	r, err := f.sw.Step(ctx, "schedule", nil)

	if err != nil || r.Outcome != Started || r.Sweep != "dead-listing" || r.Next == nil {
		t.Fatalf("after the claim expired: %+v %v", r, err)
	}
}

func TestStep_BrokerRefusalEndsTheBatchAndTheRestFollows(t *testing.T) {
	o := testOptions()
	o.BatchSize = 4
	f := newFixture(t, o, "u1", "u2", "u3", "u4", "u5", "u6")
	refused := 0
	f.snd.fail = func(r Request) error {
		if r.User == "u3" && refused == 0 {
			refused++
			return errBroker
		}
		return nil
	}

	steps := f.run(t)

	got := f.snd.all()
	seen := map[string]int{}
	for _, r := range got {
		seen[r.User]++
	}
	for _, u := range []string{"u1", "u2", "u3", "u4", "u5", "u6"} {
		if seen[u] < 1 || seen[u] > 2 {
			t.Errorf("%s requested %d times", u, seen[u])
		}
	}
	if seen["u1"] != 1 || seen["u2"] != 1 {
		t.Errorf("requests before the refused one were sent again: %v", seen)
	}
	if testutil.ToFloat64(f.sw.m.sendFailures) != 1 || f.status(t).Counts["send_failures"] != 1 {
		t.Errorf("send failures not counted")
	}
	if steps[len(steps)-1].Outcome != Finished {
		t.Errorf("steps %+v", steps)
	}
}

func TestStep_AHostThatCannotBeListedLeavesPendingAndFailedUsers(t *testing.T) {
	f := newFixture(t, testOptions())
	f.dove.RespondList = func() doveadmtest.Reply { return doveadmtest.Reply{ExitCode: 75} }
	ctx := context.Background()
	_ = f.st.MarkPending(ctx, "p1", "mail-a", f.now())
	f.synced(t, "f1", time.Hour, true)
	f.failed(t, "f1", time.Hour)

	f.run(t)

	got := byUser(t, f.snd.all())
	if len(got) != 2 || got["p1"].Reason != ReasonPending || got["f1"].Reason != ReasonFailed {
		t.Errorf("requested %+v", got)
	}
	if testutil.ToFloat64(f.sw.m.listFailures.WithLabelValues("mail-a")) != 1 {
		t.Error("list failure not counted")
	}
}

// TestStep_AListingCutShortByTheBudgetStillSweeps: a host whose listing
// outlasts the step's budget is cut short, counted, and the sweep goes on
// with what was listed and with the pending and failed users; it used to
// fail the step (what was listed could not be recorded after the
// listing's deadline), and every redelivery the same way.
func TestStep_AListingCutShortByTheBudgetStillSweeps(t *testing.T) {
	o := testOptions()
	o.Budget = 2 * time.Second
	f := newFixture(t, o)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `[["doveadmResponse",{"userList":["u1","u2"`)
		w.(http.Flusher).Flush()
		select { // slower than the budget
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)
	f.build(t, []Source{{Name: "mail-a", Endpoint: doveadm.Endpoint{Name: "mail-a", URL: slow.URL + "/doveadm/v1", Password: "x", Destination: "tcp:r:1"}}})
	if err := f.st.MarkPending(context.Background(), "p1", "mail-a", f.now()); err != nil {
		t.Fatal(err)
	}

	f.run(t)

	if got := byUser(t, f.snd.all()); got["p1"].Reason != ReasonPending {
		t.Errorf("requested %v, want the pending user", users(got))
	}
	if testutil.ToFloat64(f.sw.m.listFailures.WithLabelValues("mail-a")) != 1 {
		t.Error("the listing cut short is not counted")
	}
}

// TestStep_AHostThatDoesNotAnswerKeepsNoOtherFromBeingListed: the hosts
// are listed at once, so one that never answers costs the others nothing.
func TestStep_AHostThatDoesNotAnswerKeepsNoOtherFromBeingListed(t *testing.T) {
	o := testOptions()
	o.Budget = 2 * time.Second
	f := newFixture(t, o)
	f.dove.RespondList = func() doveadmtest.Reply { return doveadmtest.Reply{Delay: 5 * time.Second} }
	b := doveadmtest.NewServer(t, "mail-b", nil)
	b.SetUsers("b1", "b2")
	f.build(t, []Source{{Name: "mail-a", Endpoint: endpoint(f.dove)}, {Name: "mail-b", Endpoint: endpoint(b)}})

	f.run(t)

	if got := byUser(t, f.snd.all()); len(got) != 2 || got["b1"].Host != "mail-b" || got["b2"].Host != "mail-b" {
		t.Errorf("requested %v; mail-b listed %d times", users(got), b.ListCalls())
	}
	if testutil.ToFloat64(f.sw.m.listFailures.WithLabelValues("mail-a")) != 1 {
		t.Error("the host that did not answer is not counted")
	}
}

func TestStep_AFailedListingIsTriedAgain(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "-bad")
	var tries []time.Time
	// Dovecot 2.4.1 fails a large listing now and then with exit code 65;
	// a Dovecot restarting answers 503 for a while.
	f.dove.RespondList = func() doveadmtest.Reply {
		tries = append(tries, time.Now())
		switch len(tries) {
		case 1:
			return doveadmtest.Reply{ExitCode: 65}
		case 2, 3:
			return doveadmtest.Reply{Status: 503}
		}
		return doveadmtest.Reply{}
	}

	f.run(t)

	if got := byUser(t, f.snd.all()); len(got) != 2 || f.dove.ListCalls() != 4 {
		t.Errorf("requested %v after %d listings", users(got), f.dove.ListCalls())
	}
	// The tries are apart, each pause twice the one before (20 ms first
	// in tests, 1 s in production).
	for i := 1; i < len(tries); i++ {
		if want := f.sw.listPause << (i - 1); tries[i].Sub(tries[i-1]) < want {
			t.Errorf("try %d came %v after the one before, want at least %v", i+1, tries[i].Sub(tries[i-1]), want)
		}
	}
	if testutil.ToFloat64(f.sw.m.listFailures.WithLabelValues("mail-a")) != 0 || testutil.ToFloat64(f.sw.m.skipped.WithLabelValues(SkipBadUser)) != 1 {
		t.Error("a listing that passed on its second try counted as failed, or its bad name twice")
	}
	// Credentials do not get better by trying again.
	f2 := newFixture(t, testOptions(), "u1")
	f2.dove.RespondList = func() doveadmtest.Reply { return doveadmtest.Reply{Status: 401} }
	f2.run(t)
	if f2.dove.ListCalls() != 1 || testutil.ToFloat64(f2.sw.m.listFailures.WithLabelValues("mail-a")) != 1 {
		t.Errorf("401: %d listings", f2.dove.ListCalls())
	}
}

func TestStep_NothingToSweepFinishesAtOnce(t *testing.T) {
	f := newFixture(t, testOptions())
	steps := f.run(t)
	if len(steps) != 1 || steps[0].Outcome != Finished || f.status(t).LastCompletedEnd.IsZero() {
		t.Errorf("steps %+v status %+v", steps, f.status(t))
	}
}

func TestStep_EachUserOnceFromTheFirstHostThatListsIt(t *testing.T) {
	f := newFixture(t, testOptions(), "both", "only-a")
	// The hosts are listed at once; mail-b's listing is written first.
	f.dove.RespondList = func() doveadmtest.Reply { return doveadmtest.Reply{Delay: 200 * time.Millisecond} }
	b := doveadmtest.NewServer(t, "mail-b", nil)
	b.SetUsers("both", "only-b")
	f.build(t, []Source{{Name: "mail-a", Endpoint: endpoint(f.dove)}, {Name: "mail-b", Endpoint: endpoint(b)}})

	f.run(t)

	got := byUser(t, f.snd.all())
	if got["both"].Host != "mail-a" || got["only-a"].Host != "mail-a" || got["only-b"].Host != "mail-b" || len(got) != 3 {
		t.Errorf("requests %+v", got)
	}
}

func TestStep_RedisDownIsAnError(t *testing.T) {
	f := newFixture(t, testOptions(), "u1")
	f.mr.Close()
	_, err := f.sw.Step(context.Background(), "schedule", nil)
	if err == nil || errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "redis") {
		t.Errorf("err %v", err)
	}
	if _, err := f.sw.Step(context.Background(), "", &Cursor{Sweep: "x", Offset: 3}); err == nil {
		t.Error("batch without redis: no error")
	}
}

func TestStatusCollector(t *testing.T) {
	f := newFixture(t, testOptions(), "u1")
	f.reg.MustRegister(NewStatusCollector(f.st))
	f.run(t)
	st := f.status(t)
	n, err := testutil.GatherAndCount(f.reg, "dovewarden_sweep_last_end_timestamp_seconds", "dovewarden_sweep_running")
	if err != nil || n != 2 {
		t.Fatalf("gathered %d, %v", n, err)
	}
	mfs, _ := f.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "dovewarden_sweep_last_end_timestamp_seconds" {
			if v := mf.GetMetric()[0].GetGauge().GetValue(); int64(v) != st.LastCompletedEnd.Unix() {
				t.Errorf("last end %v, want %v", v, st.LastCompletedEnd.Unix())
			}
		}
	}
}

// TestNew_ListingCountersStartAtZero: a sweeper's listing counters, users
// listed and failed listings, are there for every host before any sweep,
// at 0, so rate() and alerts see a first failure (docs/operations.md).
func TestNew_ListingCountersStartAtZero(t *testing.T) {
	f := newFixture(t, testOptions(), "u1")
	f.build(t, []Source{{Name: "mail-a"}, {Name: ""}})
	want := ""
	for _, name := range []string{"dovewarden_sweep_list_failures_total", "dovewarden_sweep_users_listed_total"} {
		want += "# HELP " + name + " " + map[string]string{
			"dovewarden_sweep_list_failures_total": "User listings that failed or were cut short, by host.",
			"dovewarden_sweep_users_listed_total":  "Usernames the Dovecot hosts listed, by host.",
		}[name] + "\n# TYPE " + name + " counter\n" +
			name + `{host="default"} 0` + "\n" + name + `{host="mail-a"} 0` + "\n"
	}
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(want),
		"dovewarden_sweep_list_failures_total", "dovewarden_sweep_users_listed_total"); err != nil {
		t.Error(err)
	}
}

// TestStep_ListedNamesAreNormalised: the userdb lists names as it spells
// them; the sweep judges and requests each by the name ingest and sync
// keep its records under (--username-format), once however many
// spellings the listing has, and skips an excluded user listed in
// another case.
func TestStep_ListedNamesAreNormalised(t *testing.T) {
	o := testOptions()
	uf, err := dovecot.ParseUsernameFormat("%Lu")
	if err != nil {
		t.Fatal(err)
	}
	o.Username = uf
	f := newFixture(t, o, "Alice@Example.org", "bob@example.org", "BOB@example.org", "Carol@Example.org")
	if err := f.st.Exclude(context.Background(), "carol@example.org"); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	got := byUser(t, f.snd.all())
	if len(got) != 2 || got["alice@example.org"].User == "" || got["bob@example.org"].User == "" {
		t.Errorf("requested %v, want alice@example.org and bob@example.org", users(got))
	}
	if n := testutil.ToFloat64(f.sw.m.skipped.WithLabelValues(SkipExcluded)); n != 1 {
		t.Errorf("%v excluded users skipped, want 1 (Carol@Example.org)", n)
	}
}

// TestStep_ExcludedUsersLoseTheirMarks: a user excluded by hand (SADD, as
// on a cluster) after it failed keeps no failed or pending mark once a
// sweep has seen it: nothing would ever clear them, and the failing-users
// alert would fire for ever.
func TestStep_ExcludedUsersLoseTheirMarks(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "gone")
	bg := context.Background()
	if err := f.st.MarkPending(bg, "gone", "mail-a", f.now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.ZAdd(bg, state.FailedKey, redis.Z{Score: float64(f.now().Add(-time.Hour).UnixMilli()), Member: "gone"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.SAdd(bg, state.ExcludedKey, "gone").Err(); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	o, err := f.st.Overview(bg)
	if err != nil || o.Pending != 0 || o.Failed != 0 || o.Excluded != 1 {
		t.Errorf("after a sweep: %+v, %v; want gone excluded, and neither pending nor failed", o, err)
	}
	if got := byUser(t, f.snd.all()); got["gone"].User != "" || got["u1"].User == "" {
		t.Errorf("requested %v; want u1 only", users(got))
	}
}

// retryFixture lists "never", "pending" and "failed", and Redis knows
// "pending" as pending and "failed" as failed 10 minutes ago (its retry
// due); batches of one user.
func retryFixture(t *testing.T) (*fixture, context.Context) {
	o := testOptions()
	o.BatchSize = 1
	f := newFixture(t, o, "never", "pending", "failed")
	ctx := context.Background()
	if err := f.st.MarkPending(ctx, "pending", "mail-a", f.now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	f.failed(t, "failed", 10*time.Minute)
	return f, ctx
}

// TestStep_ARetrySweepTakesTheFailedAndPendingUsersOnly: a retry sweep
// lists no host and requests the users Redis knows as failed (due) or
// pending, not the others a listing would name; it is no "last completed"
// sweep.
func TestStep_ARetrySweepTakesTheFailedAndPendingUsersOnly(t *testing.T) {
	f, ctx := retryFixture(t)
	first, err := f.sw.Step(ctx, SweepReasonRetry, nil)
	if err != nil || first.Outcome != Started || first.Next == nil {
		t.Fatalf("retry sweep: %+v %v", first, err)
	}
	next, err := f.sw.Step(ctx, "", first.Next)
	if err != nil || next.Next == nil {
		t.Fatalf("first batch: %+v %v", next, err)
	}
	if r, err := f.sw.Step(ctx, SweepReasonRetry, nil); err != nil || r.Outcome != Running {
		t.Errorf("a second retry sweep while the first runs: %+v %v, want it covered", r, err)
	}
	f.continueFrom(t, next.Next)
	got := byUser(t, f.snd.all())
	if len(got) != 2 || got["pending"].Reason != ReasonPending || got["failed"].Reason != ReasonFailed {
		t.Errorf("requested %v, want pending and failed only", got)
	}
	if n := f.dove.ListCalls(); n != 0 {
		t.Errorf("the retry sweep listed users %d times", n)
	}
	if st, _ := f.st.SweepStatus(ctx); st.Running || !st.LastCompletedEnd.IsZero() {
		t.Errorf("status %+v: want the retry sweep over, and no completed sweep recorded", st)
	}
	// A scheduled sweep then lists every user.
	if r, err := f.sw.Step(ctx, SweepReasonSchedule, nil); err != nil || r.Outcome != Started {
		t.Fatalf("the scheduled sweep after it: %+v %v", r, err)
	}
	if n := f.dove.ListCalls(); n != 1 {
		t.Errorf("the scheduled sweep listed users %d times, want 1", n)
	}
}

// TestStep_ASweepOfEveryUserReplacesARunningRetrySweep: a retry sweep
// does not cover a sweep that lists every user, which takes the failed
// and pending users too: asked for while a retry sweep runs, that sweep
// starts at once, in its place. Told to come back instead (503), it ran
// out of the Broker's retries (35 s on the sweep Trigger) behind a retry
// sweep of many failed users, and the hourly sweep was lost. A retry
// sweep asked for while the sweep of every user runs is covered by it.
func TestStep_ASweepOfEveryUserReplacesARunningRetrySweep(t *testing.T) {
	f, ctx := retryFixture(t)
	retry, err := f.sw.Step(ctx, SweepReasonRetry, nil)
	if err != nil || retry.Outcome != Started || retry.Next == nil {
		t.Fatalf("retry sweep: %+v %v", retry, err)
	}
	full, err := f.sw.Step(ctx, SweepReasonSchedule, nil)
	if err != nil || full.Outcome != Started || full.Next == nil || full.Sweep == retry.Sweep {
		t.Fatalf("a scheduled sweep while the retry sweep runs: %+v %v, want a new sweep started", full, err)
	}
	if got := testutil.ToFloat64(f.sw.m.finished.WithLabelValues("replaced")); got != 1 {
		t.Errorf("sweeps replaced: %v, want 1", got)
	}
	if r, err := f.sw.Step(ctx, "", retry.Next); err != nil || r.Outcome != Stale {
		t.Errorf("the replaced retry sweep's continuation: %+v %v, want stale", r, err)
	}
	next, err := f.sw.Step(ctx, "", full.Next)
	if err != nil || next.Next == nil {
		t.Fatalf("first batch: %+v %v", next, err)
	}
	if r, err := f.sw.Step(ctx, SweepReasonRetry, nil); err != nil || r.Outcome != Running || r.Sweep != full.Sweep {
		t.Errorf("a retry sweep while the scheduled one runs: %+v %v, want it covered", r, err)
	}
	f.continueFrom(t, next.Next)
	got := byUser(t, f.snd.all())
	if len(got) != 3 || got["never"].Reason != ReasonNever || got["pending"].Reason != ReasonPending || got["failed"].Reason != ReasonFailed {
		t.Errorf("requested %v, want every user", got)
	}
	if st, _ := f.st.SweepStatus(ctx); st.Running || st.LastCompletedEnd.IsZero() {
		t.Errorf("status %+v: want the scheduled sweep completed", st)
	}
}

// TestStep_AnAdministratorsSweepReplacesARunningSweepOfDovewardensOwn: an
// administrator's sweep (dovewarden sweep, after fixing the cause of
// failures) retries failed users at once, where dovewarden's own sweeps
// wait for each one's retry to be due. Asked for while a scheduled sweep
// runs, it starts at once in its place; before, it was covered by that
// sweep, and a user failed a minute before waited for its retry interval.
// A scheduled sweep, or the administrator's request again, asked for
// while the administrator's sweep runs is covered by it.
func TestStep_AnAdministratorsSweepReplacesARunningSweepOfDovewardensOwn(t *testing.T) {
	o := testOptions()
	o.BatchSize = 1
	f := newFixture(t, o, "u1", "u2", "u3", "recent")
	ctx := context.Background()
	f.failed(t, "recent", time.Minute)
	sched, err := f.sw.Step(ctx, SweepReasonSchedule, nil)
	if err != nil || sched.Outcome != Started {
		t.Fatalf("scheduled sweep: %+v %v", sched, err)
	}
	batch, err := f.sw.Step(ctx, "", sched.Next)
	if err != nil || batch.Next == nil {
		t.Fatalf("its first batch: %+v %v", batch, err)
	}

	admin, err := f.sw.Step(ctx, "cli", nil)

	if err != nil || admin.Outcome != Started || admin.Sweep == sched.Sweep {
		t.Fatalf("an administrator's sweep while the scheduled one runs: %+v %v, want a new sweep started", admin, err)
	}
	if got := testutil.ToFloat64(f.sw.m.finished.WithLabelValues("replaced")); got != 1 {
		t.Errorf("sweeps replaced: %v, want 1", got)
	}
	if r, err := f.sw.Step(ctx, "", batch.Next); err != nil || r.Outcome != Stale {
		t.Errorf("the replaced sweep's continuation: %+v %v, want stale", r, err)
	}
	next, err := f.sw.Step(ctx, "", admin.Next)
	if err != nil || next.Next == nil {
		t.Fatalf("the administrator's first batch: %+v %v", next, err)
	}
	for _, reason := range []string{"cli", SweepReasonSchedule, SweepReasonRetry} {
		if r, err := f.sw.Step(ctx, reason, nil); err != nil || r.Outcome != Running || r.Sweep != admin.Sweep {
			t.Errorf("a %s sweep while the administrator's runs: %+v %v, want it covered", reason, r, err)
		}
	}
	f.continueFrom(t, next.Next)
	if got := byUser(t, f.snd.all()); got["recent"].Reason != ReasonFailed {
		t.Errorf("requested %v: want the user failed a minute ago retried", got)
	}
}

// TestStep_AReplacedRetryStepsFullRequestsAreNotAskedAgain: a sweep that
// lists every user replaces a retry sweep while the retry sweep's step is
// sending; that step's batch is not recorded, but the full syncs it asked
// for went to the Broker. The new sweep must not ask for them again: a
// full request skips the "covered" check, so each duplicate costs a
// second full dsync.
func TestStep_AReplacedRetryStepsFullRequestsAreNotAskedAgain(t *testing.T) {
	f, ctx := retryFixture(t)
	retry, err := f.sw.Step(ctx, SweepReasonRetry, nil)
	if err != nil || retry.Next == nil {
		t.Fatalf("retry sweep: %+v %v", retry, err)
	}
	var full Result
	once := false
	f.snd.fail = func(r Request) error {
		if !once {
			once = true
			// The scheduled sweep starts while the retry step sends.
			if full, err = f.sw.Step(ctx, SweepReasonSchedule, nil); err != nil || full.Outcome != Started {
				t.Errorf("the scheduled sweep: %+v %v", full, err)
			}
		}
		return nil
	}
	r, err := f.sw.Step(ctx, "", retry.Next)
	if err != nil || r.Outcome != Stale || r.Requested != 1 {
		t.Fatalf("the replaced retry step: %+v %v; want one request sent, its batch not recorded (stale: replaced)", r, err)
	}
	sent := f.snd.all()[0]
	if !sent.Full {
		t.Fatalf("the retry step's request %+v: want a full one (never replicated)", sent)
	}
	f.snd.fail = nil
	f.continueFrom(t, full.Next)
	fulls := 0
	for _, req := range f.snd.all() {
		if req.User == sent.User && req.Full {
			fulls++
		}
	}
	if fulls != 1 {
		t.Errorf("%s: %d full syncs requested, want 1 (the retry step's, still queued)", sent.User, fulls)
	}
}

// TestStep_KnownUsersWhereTheUserdbCannotBeListed: with ListKnown no host
// is listed; the candidates are the users Redis has a record of, each
// requested from the host of its last dsync, and a user Redis never heard
// of is not among them.
func TestStep_KnownUsersWhereTheUserdbCannotBeListed(t *testing.T) {
	o := testOptions()
	o.List = ListKnown
	f := newFixture(t, o, "listed-only")
	ctx := context.Background()
	f.synced(t, "stale", 25*time.Hour, true)
	f.synced(t, "fresh", time.Hour, true)
	if err := f.rdb.HSet(ctx, state.UserKey("stale"), state.FieldLastSuccessHost, "mail-b").Err(); err != nil {
		t.Fatal(err)
	}
	_ = f.st.MarkPending(ctx, "p1", "mail-a", f.now())

	f.run(t)

	if n := f.dove.ListCalls(); n != 0 {
		t.Errorf("the userdb was listed %d times", n)
	}
	got := byUser(t, f.snd.all())
	if len(got) != 2 || got["stale"].Reason != ReasonStale || got["stale"].Host != "mail-b" || !got["stale"].Full ||
		got["p1"].Reason != ReasonPending {
		t.Errorf("requested %+v; want stale (full, from mail-b) and p1", got)
	}
	if st := f.status(t); st.Listed != 3 || st.Total != 3 {
		t.Errorf("sweep listed %d of %d candidates, want the 3 users with a record", st.Listed, st.Total)
	}
	if n := testutil.ToFloat64(f.sw.m.listed.WithLabelValues(knownLabel)); n != 3 {
		t.Errorf("listed{host=known} %v, want 3", n)
	}
}

// TestStep_AUserdbThatCannotIterateIsNamedInTheLog: Dovecot answers a
// listing of a userdb that cannot iterate with exit code 65 over its HTTP
// API (75 from the CLI), at every sweep; the log names the way out
// (--sweep-list known). A listing refused for another reason does not.
func TestStep_AUserdbThatCannotIterateIsNamedInTheLog(t *testing.T) {
	for _, c := range []struct {
		reply doveadmtest.Reply
		hint  bool
	}{
		{doveadmtest.Reply{ExitCode: 65}, true},
		{doveadmtest.Reply{ExitCode: 75}, true},
		{doveadmtest.Reply{Status: http.StatusUnauthorized}, false},
	} {
		f := newFixture(t, testOptions())
		f.dove.RespondList = func() doveadmtest.Reply { return c.reply }
		var logs safebuf.Buffer
		f.sw.log = slog.New(slog.NewTextHandler(&logs, nil))
		f.run(t)
		if got := strings.Contains(logs.String(), "set --sweep-list known"); got != c.hint {
			t.Errorf("listing answered %+v: hint logged %v, want %v\n%s", c.reply, got, c.hint, logs.String())
		}
	}
}
