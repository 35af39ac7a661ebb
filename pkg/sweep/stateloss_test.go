package sweep

import (
	"context"
	"testing"
	"time"
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
