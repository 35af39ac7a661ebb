package state_test

import (
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestRun_UncleanStopSetsTheRecoveryTime: a run that ended with RunEnd
// leaves nothing behind; one that did not is reported by the next
// RunBegin of the same instance, which sets the recovery time the sweep
// reads.
func TestRun_UncleanStopSetsTheRecoveryTime(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		const inst = "mail1 127.0.0.1:8080"
		if u, err := b.st.RunBegin(ctx, inst, "run-1", time.Hour); err != nil || u != nil {
			t.Fatalf("first run: %+v %v, want no unclean run", u, err)
		}
		if err := b.st.RunEnd(ctx, inst, "run-1"); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.rdb.Exists(ctx, state.RunKey(inst), state.RecoveryKey).Result(); n != 0 {
			t.Fatalf("a clean stop left %d keys", n)
		}
		if u, err := b.st.RunBegin(ctx, inst, "run-2", time.Hour); err != nil || u != nil {
			t.Fatalf("after a clean stop: %+v %v, want no unclean run", u, err)
		}

		// run-2 never ends; run-3 finds it.
		before := time.Now().Add(-time.Second)
		u, err := b.st.RunBegin(ctx, inst, "run-3", time.Hour)
		if err != nil || u == nil || u.Run != "run-2" {
			t.Fatalf("after an unclean stop: %+v %v, want run-2", u, err)
		}
		if u.Recovery.Before(before) || u.Recovery.After(time.Now().Add(time.Second)) {
			t.Errorf("recovery time %v, want now", u.Recovery)
		}
		if ttl, _ := b.rdb.PTTL(ctx, state.RecoveryKey).Result(); ttl <= 59*time.Minute || ttl > time.Hour {
			t.Errorf("recovery mark TTL %v, want the hour given", ttl)
		}
		fs, err := b.st.SweepFacts(ctx, []string{"a", "b"})
		if err != nil || len(fs) != 2 || !fs[0].Recovery.Equal(u.Recovery) || !fs[1].Recovery.Equal(u.Recovery) {
			t.Errorf("sweep facts %+v %v, want the recovery time %v", fs, err, u.Recovery)
		}

		// Another instance's run is its own.
		if u, _ := b.st.RunBegin(ctx, "mail2 127.0.0.1:8080", "run-x", 0); u != nil {
			t.Errorf("another instance: %+v", u)
		}
		// A stale RunEnd (a run another took over) leaves the key.
		if err := b.st.RunEnd(ctx, inst, "run-2"); err != nil {
			t.Fatal(err)
		}
		if v, _ := b.rdb.Get(ctx, state.RunKey(inst)).Result(); v != "run-3" {
			t.Errorf("run key %q after another run's end, want run-3", v)
		}
		// Without a TTL the mark stays.
		b.rdb.Del(ctx, state.RecoveryKey)
		if u, _ := b.st.RunBegin(ctx, inst, "run-4", 0); u == nil || u.Run != "run-3" {
			t.Fatalf("run-4 found %+v, want run-3", u)
		}
		if ttl, _ := b.rdb.PTTL(ctx, state.RecoveryKey).Result(); ttl != -1 {
			t.Errorf("recovery mark TTL %v with none asked for, want none (-1)", ttl)
		}
	})
}

func TestSweep_FactsWithoutRecovery(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		fs, err := b.st.SweepFacts(ctx, []string{"a"})
		if err != nil || len(fs) != 1 || !fs[0].Recovery.IsZero() {
			t.Errorf("%+v %v, want no recovery time", fs, err)
		}
	})
}
