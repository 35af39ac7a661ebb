package sweep

import (
	"context"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestStep_ARequestAfterTheClockSteppedBackIsNotCoveredByAnEarlierDsync:
// a user's dsync succeeds, a change of the user after it is left pending
// (its dsync was cut off), and then Redis's TIME steps back a minute (an
// NTP step, a failover to a host whose clock lags). The sweep's request
// for the pending user is compared with the last dsync's start, which
// was taken on the clock that never goes below the latest attempt start
// (state.Now): stamped with TIME it looked a minute older than that
// dsync, "covered" by it, and the change waited until TIME was past the
// dsync's start again and a later sweep asked once more.
func TestStep_ARequestAfterTheClockSteppedBackIsNotCoveredByAnEarlierDsync(t *testing.T) {
	o := testOptions()
	f := newFixture(t, o, "u1")
	ctx := context.Background()
	const ttl = 30 * time.Second
	skew := 2 * time.Second // the sync function's default --clock-skew
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	f.mr.SetTime(t0)
	c := fullSync(t, f.st, ttl)
	// A change after that dsync; its own dsync is cut off: pending.
	f.mr.SetTime(t0.Add(10 * time.Second))
	at, err := f.st.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := f.st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Token: "b", Destination: "d", At: at, TTL: ttl})
	if err != nil || c2.Decision != state.Run {
		t.Fatal(c2, err)
	}
	if _, err := f.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "b", Host: "mail-a", Error: "cut off",
		Class: "lost_lock", At: at, Release: true, Start: c2.Start}); err != nil {
		t.Fatal(err)
	}

	f.mr.SetTime(t0.Add(-time.Minute)) // TIME steps back
	f.run(t)
	got := byUser(t, f.snd.all())
	r, ok := got["u1"]
	if !ok || r.Reason != ReasonPending {
		t.Fatalf("requests %v: want u1 as pending", got)
	}
	// The sync function's decision on the request (no observed_at stamp:
	// its time, with the clock-skew margin).
	d, err := f.st.Begin(ctx, state.BeginArgs{User: "u1", Host: r.Host, Token: "c", Destination: "d", At: r.Time, TTL: ttl,
		Margin: skew, Full: r.Full})
	if err != nil {
		t.Fatal(err)
	}
	if d.Decision != state.Run {
		t.Errorf("the sweep's request for the pending user (time %v): %s, want run: the dsync it was taken as covered by started at %v, before the change",
			r.Time, d.Decision, c.Start)
	}
}

// TestStep_TheRecoveryTimeIsNotBeforeADsyncThatStartedEarlier: a user's
// dsync succeeds, then Redis's TIME steps back a minute and local mode
// starts again (or an administrator asks for a sweep of every user): the
// user's changes made since that dsync may have left no event, so the
// sweep must request it (reason recovery). The recovery time was TIME, a
// minute before the dsync's start as recorded, so the user looked
// replicated since, and such a change waited for its periodic full sync.
func TestStep_TheRecoveryTimeIsNotBeforeADsyncThatStartedEarlier(t *testing.T) {
	f := newFixture(t, testOptions(), "u1")
	ctx := context.Background()
	const ttl = 30 * time.Second
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	f.mr.SetTime(t0)
	c := fullSync(t, f.st, ttl)
	f.mr.SetTime(t0.Add(-time.Minute)) // TIME steps back
	rec, err := f.st.SetRecovery(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if r, ok := byUser(t, f.snd.all())["u1"]; !ok || r.Reason != ReasonRecovery {
		t.Errorf("recovery time %v, the user's last dsync started at %v: request %+v (%v), want one for recovery",
			rec, c.Start, r, ok)
	}
}

// fullSync runs a successful full dsync of u1 through st, at Redis's time.
func fullSync(t *testing.T, st *state.Store, ttl time.Duration) state.Claim {
	t.Helper()
	ctx := context.Background()
	c, err := st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Token: "a", Destination: "d", TTL: ttl, Full: true})
	if err != nil || c.Decision != state.Run {
		t.Fatal(c, err)
	}
	if _, n, err := st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "a", Host: "mail-a", Destination: "d",
		NewState: "s1", Start: c.Start, TTL: ttl, Full: true}); err != nil || n.Decision != state.Done {
		t.Fatal(n, err)
	}
	return c
}

// TestStep_ASweepBegunAfterTheRecoveryTimeIsNotReplacedWhenTheClockSteppedBack:
// a user's dsync succeeds, Redis's TIME steps back a minute, and an
// administrator asks for a sweep of every user (dovewarden sweep --all).
// The recovery time is then past TIME (no earlier than the dsync's
// start), and the sweep it starts, stamped with TIME, looked as if it had
// started before it: each later sweep.requested replaced it, until TIME
// was past the recovery time again; a retry sweep (every 5 minutes),
// which lists no host, in its place, so the users the sweep of every user
// had not reached waited for a later one.
func TestStep_ASweepBegunAfterTheRecoveryTimeIsNotReplacedWhenTheClockSteppedBack(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "u3", "u4", "u5", "u6", "u7")
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	f.mr.SetTime(t0)
	fullSync(t, f.st, 30*time.Second)
	f.mr.SetTime(t0.Add(-time.Minute)) // TIME steps back
	// The request's time, on the administrator's clock, which did not.
	if err := f.sw.Everyone(ctx, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	all, err := f.sw.Step(ctx, "cli", nil)
	if err != nil || all.Outcome != Started || all.Next == nil {
		t.Fatalf("the sweep of every user: %+v %v", all, err)
	}
	f.mr.SetTime(t0.Add(-time.Minute + time.Second))
	batch, err := f.sw.Step(ctx, "", all.Next)
	if err != nil || batch.Next == nil {
		t.Fatalf("its first batch: %+v %v", batch, err)
	}

	f.mr.SetTime(t0.Add(-time.Minute + 2*time.Second))
	r, err := f.sw.Step(ctx, SweepReasonRetry, nil)

	if err != nil || r.Outcome != Running || r.Sweep != all.Sweep {
		t.Fatalf("a retry sweep asked for while the sweep of every user runs: %+v %v, want it covered", r, err)
	}
	f.continueFrom(t, batch.Next)
	if got := byUser(t, f.snd.all()); len(got) != 7 {
		t.Errorf("requested %v, want all 7 users", users(got))
	}
}
