package replicator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// TestReplicate_ObservedChangesCoalesceExactly: a change stamped with the
// Redis clock when ingest saw it is covered by any dsync that started
// after that, with no clock-skew margin; the same change known only by its
// Dovecot time still needs the margin, and so runs a dsync of its own.
func TestReplicate_ObservedChangesCoalesceExactly(t *testing.T) {
	o := fast
	o.ClockSkew = time.Hour // a margin no stamped change may need
	f := newFixture(t, o)

	// Some milliseconds back: the dsync's start is Redis's clock in whole
	// milliseconds, so a change seen within the millisecond it starts in
	// is not known to be before it (failed about 1 run in 3 with now).
	seen := time.Now().Add(-5 * time.Millisecond).UTC()
	first := f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen})
	if first.Outcome != change.Synced {
		t.Fatalf("first change: %s, want synced", first.Outcome)
	}

	// Seen before that dsync started: covered, exactly.
	again := f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen})
	if again.Outcome != change.Covered {
		t.Errorf("stamped change seen before the last dsync started: %s, want covered", again.Outcome)
	}
	// The same change without the stamp: Dovecot's clock cannot be
	// trusted within the margin, so it syncs again.
	unstamped := f.replicate(t, change.Request{User: "u1", Time: seen})
	if unstamped.Outcome != change.Synced {
		t.Errorf("unstamped change: %s, want synced", unstamped.Outcome)
	}
	// Seen after the last dsync started: not covered.
	later := time.Now().Add(50 * time.Millisecond).UTC()
	f.mr.SetTime(later.Add(time.Second))
	after := f.replicate(t, change.Request{User: "u1", Time: later, Observed: later})
	if after.Outcome != change.Synced {
		t.Errorf("stamped change seen after the last dsync started: %s, want synced", after.Outcome)
	}
	if n := len(f.tracks.CallsOf("u1")); n != 3 {
		t.Errorf("%d dsyncs, want 3", n)
	}
}

// TestReplicate_CoveredFromMemory: once this instance saw a dsync of u1
// succeed, a stamped change seen before that dsync started is acknowledged
// without asking Redis (Redis is gone here); one seen after it still needs
// Redis, and so fails as unavailable rather than being acknowledged.
func TestReplicate_CoveredFromMemory(t *testing.T) {
	f := newFixture(t, fast)
	seen := time.Now().UTC().Add(-time.Second)
	if res := f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen}); res.Outcome != change.Synced {
		t.Fatalf("first change: %s", res.Outcome)
	}
	f.mr.Close()

	res, err := f.r.Replicate(context.Background(), change.Request{User: "u1", Time: seen, Observed: seen, Priority: change.Low})
	if err != nil || res.Outcome != change.Covered {
		t.Errorf("covered change with Redis down: %+v, %v; want covered", res, err)
	}
	later := time.Now().UTC().Add(time.Minute)
	if _, err := f.r.Replicate(context.Background(), change.Request{User: "u1", Time: later, Observed: later, Priority: change.Low}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a newer change with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := f.r.Replicate(context.Background(), change.Request{User: "u2", Time: seen, Observed: seen, Priority: change.Low}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("another user's change with Redis down: %v, want ErrUnavailable", err)
	}
}

// TestReplicate_MergedInProcessWhileDsyncRuns: stamped changes of a user
// whose dsync runs in this instance are acknowledged without Redis: those
// seen before the attempt started are covered by it, those seen after make
// the owner run exactly one more attempt. While the dsync runs the user
// stays in the pending set, so an owner that died would leave the changes
// to the next event or the sweep.
func TestReplicate_MergedInProcessWhileDsyncRuns(t *testing.T) {
	for _, tc := range []struct {
		name         string
		before, late int
		dsyncs       int
	}{
		{"seen before the attempt started", 5, 0, 1},
		{"seen after it started", 0, 5, 2},
		{"both", 3, 3, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fast)
			started, free := f.hold(t, true)
			seen := time.Now().UTC().Add(-time.Second)
			done := make(chan change.Result)
			go func() { done <- f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen}) }()
			<-started

			st, err := f.st.Status(context.Background(), "u1")
			if err != nil || st.PendingSince.IsZero() || !st.InProgress {
				t.Fatalf("status while the dsync runs: %+v, %v; want pending and in progress", st, err)
			}
			for i := range tc.before {
				at := seen.Add(time.Duration(i) * time.Millisecond)
				if res := f.replicate(t, change.Request{User: "u1", Time: at, Observed: at}); res.Outcome != change.Coalesced {
					t.Fatalf("change seen before the start: %+v", res)
				}
			}
			for range tc.late {
				at := time.Now().UTC().Add(time.Second)
				if res := f.replicate(t, change.Request{User: "u1", Time: at, Observed: at}); res.Outcome != change.Coalesced {
					t.Fatalf("change seen after the start: %+v", res)
				}
			}
			if got := counter(t, f, metrics.SyncLockContention); got != 0 {
				t.Errorf("%v changes went to Redis and found the lock held; want all merged in-process", got)
			}
			free()
			res := <-done
			if n := len(f.tracks.CallsOf("u1")); n != tc.dsyncs {
				t.Errorf("%d dsyncs, want %d", n, tc.dsyncs)
			}
			if want := 1 + tc.before + tc.late; res.Outcome != change.Synced || res.Coalesced != want {
				t.Errorf("result %+v, want synced covering %d changes", res, want)
			}
			st, _ = f.st.Status(context.Background(), "u1")
			if !st.PendingSince.IsZero() || st.InProgress {
				t.Errorf("status after: %+v, want nothing pending", st)
			}
			// The flight is over: a newer change runs a dsync of its own.
			at := time.Now().UTC().Add(2 * time.Second)
			f.mr.SetTime(at.Add(time.Second))
			if res := f.replicate(t, change.Request{User: "u1", Time: at, Observed: at}); res.Outcome != change.Synced {
				t.Errorf("change after the flight: %+v, want synced", res)
			}
		})
	}
}

// TestReplicate_MergedChangesOfAFailedDsyncStayMarked: changes merged into
// a dsync that then fails for good are acknowledged with the user marked
// failed and pending, for the sweep.
func TestReplicate_MergedChangesOfAFailedDsyncStayMarked(t *testing.T) {
	f := newFixture(t, fast)
	started, free := f.hold(t, false)
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 77}) // EX_NOPERM: not retried
	seen := time.Now().UTC().Add(-time.Second)
	done := make(chan change.Result)
	go func() { done <- f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen}) }()
	<-started
	at := time.Now().UTC().Add(time.Second)
	if res := f.replicate(t, change.Request{User: "u1", Time: at, Observed: at}); res.Outcome != change.Coalesced {
		t.Fatalf("change during the dsync: %+v", res)
	}
	free()
	if res := <-done; res.Outcome != change.Failed {
		t.Fatalf("result %+v, want failed", res)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if st.PendingSince.IsZero() || !st.Failed || st.InProgress {
		t.Errorf("status %+v: want failed and pending, not in progress", st)
	}
}

// TestReplicate_MergedChangesOfADsyncThatOutlivedItsLockStayMarked: the
// lock of a running dsync expires unnoticed (the machine was suspended,
// and this process's clock did not see the time pass); another instance takes it, runs and succeeds,
// clearing the pending set. A change seen after that merges into the old
// dsync, which then succeeds without the lock: the change stays marked
// for the sweep, even when asking the Broker again fails.
func TestReplicate_MergedChangesOfADsyncThatOutlivedItsLockStayMarked(t *testing.T) {
	o := fast
	o.LockTTL = time.Minute // no renewal while the test runs
	f := newFixture(t, o)
	f.notes.askErr = errors.New("broker refused: 503")
	f.a.Tracker = doveadmtest.NewTracker(&testing.T{}) // the two dsyncs overlap on purpose
	started, release := make(chan struct{}, 10), make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	var calls atomic.Int32
	f.a.OnStart = func(doveadmtest.Call) {
		if calls.Add(1) == 1 {
			started <- struct{}{}
			<-release
		}
	}
	ctx := context.Background()
	now := func() time.Time {
		t.Helper()
		n, err := f.st.Now(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	seen := now()
	done := make(chan change.Result)
	go func() { done <- f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen}) }()
	<-started

	f.mr.FastForward(o.LockTTL + time.Second)
	other := New(o, f.st, f.r.tr, f.r.hosts, &notes{}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	time.Sleep(2 * time.Millisecond)
	seen = now()
	if res, err := other.Replicate(ctx, change.Request{User: "u1", Time: seen, Observed: seen, Priority: change.High}); err != nil || res.Outcome != change.Synced {
		t.Fatalf("the other instance: %+v, %v", res, err)
	}
	time.Sleep(2 * time.Millisecond)
	seen = now()
	res := f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen})
	free()
	<-done
	if res.Outcome != change.Coalesced {
		t.Fatalf("the change after the other dsync: %+v; the test needs it merged into the stalled one", res)
	}
	st, err := f.st.Status(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if !st.LastStart.After(seen) && st.PendingSince.IsZero() {
		t.Errorf("status %+v: a change seen at %v was acknowledged, and no dsync started after it nor is it pending", st, seen)
	}
}

// TestFlights_NoMergeOnceClosedOrLockLost: a change merges in-process only
// into an open flight from its host whose lock is surely still held; a change seen after the
// attempt started asks for another attempt, and a reopened attempt owes
// none.
func TestFlights_NoMergeOnceClosedOrLockLost(t *testing.T) {
	fs := newFlights()
	start := time.Now()
	lock, lose := context.WithCancel(context.Background())
	l := &lease{ctx: lock, end: time.Now().Add(time.Hour)}
	f := fs.begin("u1", "mail-a", start, l)
	if fs.merge("u1", "mail-b", start.Add(-time.Millisecond)) {
		t.Error("a change seen on another host merged")
	}
	if !fs.merge("u1", "mail-a", start.Add(-time.Millisecond)) {
		t.Fatal("a change seen before the start did not merge")
	}
	if rerun, merged := fs.close(f); rerun || merged != 1 {
		t.Errorf("close: rerun %v, merged %d; want false, 1", rerun, merged)
	}
	if fs.merge("u1", "mail-a", start) {
		t.Error("merged into a closed flight")
	}
	fs.reopen(f, start)
	if !fs.merge("u1", "mail-a", start) || fs.merge("u2", "mail-a", start) {
		t.Error("merge into the reopened flight (or into another user's)")
	}
	if rerun, _ := fs.close(f); !rerun {
		t.Error("a change seen at the start did not ask for another attempt")
	}
	fs.reopen(f, start.Add(time.Second))
	if rerun, _ := fs.close(f); rerun {
		t.Error("a reopened attempt owes a rerun")
	}
	fs.reopen(f, start)
	l.end = time.Now()
	if fs.merge("u1", "mail-a", start) {
		t.Error("merged into a flight whose lease ran out")
	}
	l.end = time.Now().Add(time.Hour)
	lose()
	if fs.merge("u1", "mail-a", start) {
		t.Error("merged into a flight whose lock was lost")
	}
	fs.end("u1", f)
	if _, ok := fs.m["u1"]; ok {
		t.Error("flight not forgotten")
	}
}
