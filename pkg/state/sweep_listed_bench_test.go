package state_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// BenchmarkSweepListedRealRedis times the script that ends a sweep's
// listing step on a real redis-server, with as many listed users as
// named and 1,000 pending ones: Redis answers nothing else while it runs.
// docs/benchmarks.md, "The sweep's listing", has the numbers:
//
//	go test ./pkg/state -run '^$' -bench SweepListedRealRedis -benchtime 3x
func BenchmarkSweepListedRealRedis(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("listed=%d", n), func(b *testing.B) {
			srv := redistest.Start(b)
			rdb := srv.Client(b)
			st := state.New(rdb)
			names := make([]string, n)
			for i := range names {
				names[i] = fmt.Sprintf("user%07d@example.org", i)
			}
			var pending []redis.Z
			for i := range 1000 {
				pending = append(pending, redis.Z{Score: float64(i), Member: fmt.Sprintf("pending%04d@example.org", i)})
			}
			if err := rdb.ZAdd(ctx, state.PendingKey, pending...).Err(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				id := fmt.Sprintf("s%d", i)
				if _, err := st.SweepBegin(ctx, id, "tok"+id, "schedule", time.Hour, time.Minute); err != nil {
					b.Fatal(err)
				}
				for j := 0; j < n; j += 1000 {
					if err := st.SweepAddUsers(ctx, id, 0, names[j:min(j+1000, n)], time.Hour); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				total, _, err := st.SweepListed(ctx, id, "tok"+id, state.SweepListing{HostsJSON: `["mail-a"]`, Listed: int64(n)}, time.Hour, time.Hour)
				b.StopTimer()
				if err != nil || total != int64(n+1000) {
					b.Fatalf("listed: %d, %v", total, err)
				}
				if err := rdb.Del(ctx, state.SweepLockKey, state.SweepKey, state.SweepUsersKey(id)).Err(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
