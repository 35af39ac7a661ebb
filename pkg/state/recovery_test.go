package state_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestRecovery_TimeReachesTheSweepFacts: SetRecovery stores Redis's now
// with the TTL asked for (none for 0), and every user's sweep facts carry
// it.
func TestRecovery_TimeReachesTheSweepFacts(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		fs, err := b.st.SweepFacts(ctx, []string{"a"})
		if err != nil || len(fs) != 1 || !fs[0].Recovery.IsZero() {
			t.Fatalf("before any: %+v %v, want no recovery time", fs, err)
		}
		before := time.Now().Add(-time.Second)
		at, err := b.st.SetRecovery(ctx, time.Hour)
		if err != nil || at.Before(before) || at.After(time.Now().Add(time.Second)) {
			t.Fatalf("recovery time %v %v, want now", at, err)
		}
		if ttl, _ := b.rdb.PTTL(ctx, state.RecoveryKey).Result(); ttl <= 59*time.Minute || ttl > time.Hour {
			t.Errorf("recovery TTL %v, want the hour given", ttl)
		}
		fs, err = b.st.SweepFacts(ctx, []string{"a", "b"})
		if err != nil || len(fs) != 2 || !fs[0].Recovery.Equal(at) || !fs[1].Recovery.Equal(at) {
			t.Errorf("sweep facts %+v %v, want the recovery time %v", fs, err, at)
		}
		if _, err := b.st.SetRecovery(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if ttl, _ := b.rdb.PTTL(ctx, state.RecoveryKey).Result(); ttl != -1 {
			t.Errorf("recovery TTL %v with none asked for, want none (-1)", ttl)
		}
	})
}

// TestRaiseRecovery: the recovery time rises to the time asked for, at
// most Redis's now, with the TTL asked for; asked again, or for an
// earlier time, it stays as it is, with its expiry.
func TestRaiseRecovery(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		asked := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
		for range 2 {
			at, err := b.st.RaiseRecovery(ctx, asked, time.Hour)
			if err != nil || !at.Equal(asked) {
				t.Fatalf("RaiseRecovery(%v) = %v %v", asked, at, err)
			}
		}
		if ttl, _ := b.rdb.PTTL(ctx, state.RecoveryKey).Result(); ttl <= 59*time.Minute || ttl > time.Hour {
			t.Errorf("recovery TTL %v, want the hour given", ttl)
		}
		if at, err := b.st.RaiseRecovery(ctx, asked.Add(-time.Hour), 0); err != nil || !at.Equal(asked) {
			t.Errorf("an earlier time: %v %v, want %v kept", at, err, asked)
		}
		if ttl, _ := b.rdb.PTTL(ctx, state.RecoveryKey).Result(); ttl <= 59*time.Minute {
			t.Errorf("recovery TTL %v after an earlier time, want the hour kept", ttl)
		}
		ahead := time.Now().Add(time.Hour)
		at, err := b.st.RaiseRecovery(ctx, ahead, 0)
		if err != nil || !at.After(asked) || at.After(time.Now().Add(time.Second)) {
			t.Errorf("a time an hour ahead: %v %v, want Redis's now", at, err)
		}
		if fs, err := b.st.SweepFacts(ctx, []string{"a"}); err != nil || !fs[0].Recovery.Equal(at) {
			t.Errorf("sweep facts %+v %v, want the recovery time %v", fs, err, at)
		}
	})
}

// TestLockHeld finds a lock among many other keys, and none when there is
// none (a user named like the lock prefix does not count).
func TestLockHeld(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		for i := range 3000 {
			b.rdb.HSet(ctx, state.UserKey(fmt.Sprintf("u%d", i)), state.FieldLastStart, "1")
		}
		b.rdb.HSet(ctx, state.UserKey("lock:{x}"), state.FieldLastStart, "1")
		if held, err := b.st.LockHeld(ctx); err != nil || held {
			t.Fatalf("no lock: %v %v", held, err)
		}
		b.rdb.Set(ctx, state.LockKey("u1234"), "owner", time.Minute)
		if held, err := b.st.LockHeld(ctx); err != nil || !held {
			t.Fatalf("a lock among 3000 users: %v %v", held, err)
		}
	})
}
