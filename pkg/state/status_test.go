package state_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestOverview counts pending, failed and excluded users and finds the
// oldest pending change.
func TestOverview(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		o, err := b.st.Overview(ctx)
		if err != nil || o != (state.Overview{}) {
			t.Fatalf("empty Redis: %+v %v", o, err)
		}
		old := time.UnixMilli(1_700_000_000_000).UTC()
		b.st.MarkPending(ctx, "p1", "mail-a", old.Add(time.Hour))
		b.st.MarkPending(ctx, "p2", "mail-a", old)
		b.st.MarkPending(ctx, "p3", "mail-b", old.Add(2*time.Hour))
		b.rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: 1, Member: "f"})
		b.st.Exclude(ctx, "x1", "x2")
		at, _ := b.st.SetRecovery(ctx, 0)

		o, err = b.st.Overview(ctx)
		want := state.Overview{Pending: 3, OldestPending: old, Failed: 1, Excluded: 2, Recovery: at}
		if err != nil || o != want {
			t.Errorf("overview %+v %v, want %+v", o, err, want)
		}
	})
}
