package state_test

import (
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// beginFullAt is a request of a full sync of u1 made at at.
func beginFullAt(t *testing.T, b backend, token string, at time.Time) state.Claim {
	t.Helper()
	c, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "inst-" + token, Token: token,
		Destination: "tcp:b:1", At: at, TTL: time.Second, Margin: 100 * time.Millisecond, Full: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRedisScripts_ARetryOfAFullSyncCoversTheRequestAgain: the retry of a
// failed full attempt (Restart) is a full dsync too, so the same full
// request delivered again while the retry runs (a Broker's redelivery) is
// covered by it, as it is by the first attempt. Before, Restart recorded
// the retry as incremental (inprogress_full 0), and the redelivery cost a
// second full dsync after the retry's success.
func TestRedisScripts_ARetryOfAFullSyncCoversTheRequestAgain(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		asked := time.Now().Add(-time.Second)
		a := beginFullAt(t, b, "A", asked)
		if a.Decision != state.Run {
			t.Fatalf("the full request: %+v", a)
		}
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, Start: a.Start}); err != nil {
			t.Fatal(err)
		}
		r, err := b.st.Restart(ctx, "u1", "A", "tcp:b:1", time.Second)
		if err != nil || r.Decision != state.Run {
			t.Fatalf("the retry: %+v %v", r, err)
		}
		// The same request delivered again while the (full) retry runs.
		if c := beginFullAt(t, b, "B", asked); c.Decision != state.Busy {
			t.Fatalf("the request again during the retry: %+v, want busy", c)
		}
		if next := succeedFull(t, b, "A", r.Start, true); next.Decision != state.Done {
			t.Fatalf("the full retry's success: %+v, want done: it covered the request delivered again", next)
		}
	})
}

// TestRedisScripts_ADeadOwnersFullSyncIsTakenOver: a full sync asked for
// while the user was busy, which the owner's rerun took over, is still
// asked for when that owner dies during the rerun (its lock expires):
// the next attempt, whoever runs it, is a full one. Before, the rerun's
// start had cleared full_requested and nothing put it back: the full
// request, acknowledged as merged, was lost with the owner.
func TestRedisScripts_ADeadOwnersFullSyncIsTakenOver(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		a := begin(t, b, "A", time.Now())
		if a.Decision != state.Run {
			t.Fatalf("A: %+v", a)
		}
		time.Sleep(2 * time.Millisecond)
		if c := beginFullAt(t, b, "B", time.Now()); c.Decision != state.Busy {
			t.Fatalf("a full request during A: %+v, want busy", c)
		}
		rerun := succeedFull(t, b, "A", a.Start, true)
		if rerun.Decision != state.Run || !rerun.FullRequested {
			t.Fatalf("A's success: %+v, want a full rerun", rerun)
		}
		// A dies during its full rerun: its lock expires.
		b.expire(time.Second)
		time.Sleep(2 * time.Millisecond)
		c := begin(t, b, "C", time.Now())
		if c.Decision != state.Run || !c.FullRequested {
			t.Fatalf("the next change after A died: %+v, want a run with the full sync still asked for", c)
		}
	})
}

// succeedFull records token's successful attempt that started at start,
// a full one when full, letting it rerun.
func succeedFull(t *testing.T, b backend, token string, start time.Time, full bool) state.Claim {
	t.Helper()
	_, next, err := b.st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: token, Host: "mail-a", Destination: "tcp:b:1",
		NewState: "state-after-" + token, Start: start, TTL: time.Second, MayRerun: true, Full: full})
	if err != nil {
		t.Fatal(err)
	}
	return next
}

// TestRedisScripts_ARetryCutOffKeepsTheFullSyncItTookOver: a retry whose
// Restart ran in Redis but whose answer the owner never read (its
// request's time ran out as Redis answered) took over a full sync asked
// for while the user was busy; the owner, which never heard of it,
// releases the lock with the attempt before as its own (the abort after a
// backoff). The full sync stays asked for. Before, the release dropped
// the retry's fields and the full request with them.
func TestRedisScripts_ARetryCutOffKeepsTheFullSyncItTookOver(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		// A dsync state is kept: only a full sync asked for makes the
		// next one full.
		x := begin(t, b, "X", time.Now())
		succeed(t, b, "X", x.Start, false)
		time.Sleep(2 * time.Millisecond)
		a := begin(t, b, "A", time.Now())
		if a.Decision != state.Run {
			t.Fatalf("A: %+v", a)
		}
		time.Sleep(2 * time.Millisecond)
		if c := beginFullAt(t, b, "B", time.Now()); c.Decision != state.Busy {
			t.Fatalf("a full request during A: %+v, want busy", c)
		}
		f := state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75", Class: "tempfail",
			ExitCode: 75, At: time.Now(), Start: a.Start}
		if _, err := b.st.Fail(ctx, f); err != nil {
			t.Fatal(err)
		}
		// The retry's start takes the full request over; its answer is lost.
		if r, err := b.st.Restart(ctx, "u1", "A", "tcp:b:1", time.Second); err != nil || !r.FullRequested {
			t.Fatalf("the retry: %+v %v", r, err)
		}
		f.Release, f.Counted = true, true
		if _, err := b.st.Fail(ctx, f); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
		c := begin(t, b, "C", time.Now())
		if c.Decision != state.Run || !c.FullRequested {
			t.Fatalf("the next change: %+v, want a run with the full sync still asked for", c)
		}
	})
}
