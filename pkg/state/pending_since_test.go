package state_test

import (
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// A dsync that succeeds while newer changes wait covers every change
// before its start: the user stays pending for the newer ones only, and
// its pending time (the status's "pending since", the next attempt's
// oldest change, from which its replication lag counts) is the oldest of
// those, not the change it covered. Kept, a user whose changes kept
// arriving during its dsyncs stayed pending since its first one, and
// every later replication reported a lag from it.
func TestRedisScripts_ASuccessMovesThePendingTimePastWhatItCovered(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		old := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
		first := begin(t, b, "A", old)
		if !first.PendingSince.Equal(old) {
			t.Fatalf("claim %+v, want pending since %v", first, old)
		}
		time.Sleep(5 * time.Millisecond)
		newer := time.Now().Truncate(time.Millisecond)
		if c := begin(t, b, "B", newer); c.Decision != state.Busy {
			t.Fatalf("%+v, want busy", c)
		}
		if err := b.st.MarkPending(ctx, "u1", "mail-b", newer.Add(time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if next := succeed(t, b, "A", first.Start, false); next.Decision != state.Left {
			t.Fatalf("%+v, want left", next)
		}
		if s, ok := pendingScore(t, b); !ok || int64(s) != newer.UnixMilli() {
			t.Errorf("pending score %v (%v), want %d: the oldest change since the dsync started", int64(s), ok, newer.UnixMilli())
		}
		next := begin(t, b, "C", time.Time{})
		if next.Decision != state.Run || !next.PendingSince.Equal(newer) {
			t.Errorf("next claim %+v, want pending since %v", next, newer)
		}
	})
}

// Changes merged in-process into the attempt (Succeed's Rerun) were seen
// after it started: the user is pending since its start, at the oldest.
func TestRedisScripts_ASuccessWithChangesMergedInProcessIsPendingSinceItsStart(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		first := begin(t, b, "A", time.Now().Add(-time.Hour))
		_, next, err := b.st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "A", Host: "mail-a", Destination: "tcp:b:1",
			NewState: "s", Start: first.Start, TTL: time.Second, Rerun: true})
		if err != nil || next.Decision != state.Left {
			t.Fatalf("%+v, %v, want left", next, err)
		}
		if s, ok := pendingScore(t, b); !ok || int64(s) != first.Start.UnixMilli() {
			t.Errorf("pending score %v (%v), want the dsync's start %d", int64(s), ok, first.Start.UnixMilli())
		}
	})
}

// An ingest mark stamped by a Dovecot host whose clock is ahead does not
// move the user's pending time into the future.
func TestRedisScripts_AMarkFromAClockAheadKeepsThePendingTimeInThePast(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		first := begin(t, b, "A", time.Now().Add(-time.Hour))
		if err := b.st.MarkPending(ctx, "u1", "mail-b", time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if next := succeed(t, b, "A", first.Start, false); next.Decision != state.Left {
			t.Fatalf("%+v, want left", next)
		}
		if s, ok := pendingScore(t, b); !ok || int64(s) > time.Now().UnixMilli() {
			t.Errorf("pending score %v (%v), want one not after now", int64(s), ok)
		}
	})
}
