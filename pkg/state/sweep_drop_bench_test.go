package state_test

import (
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// zfill adds n users to the sorted set key, 10,000 a command.
func zfill(b *testing.B, rdb *redis.Client, key string, n int) {
	b.Helper()
	for j := 0; j < n; j += 10_000 {
		zs := make([]redis.Z, 0, 10_000)
		for i := j; i < min(j+10_000, n); i++ {
			zs = append(zs, redis.Z{Score: float64(i), Member: fmt.Sprintf("user%07d@example.org", i)})
		}
		if err := rdb.ZAdd(ctx, key, zs...).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSweepDropRealRedis times SweepDrop of an abandoned sweep's
// million candidates on a real redis-server: Redis answers nothing else
// while the command runs. docs/benchmarks.md, "Redis work that grows
// with the users":
//
//	go test ./pkg/state -run '^$' -bench SweepDropRealRedis -benchtime 3x
func BenchmarkSweepDropRealRedis(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	st := state.New(rdb)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		zfill(b, rdb, state.SweepUsersKey("s1"), 1_000_000)
		b.StartTimer()
		if err := st.SweepDrop(ctx, "s1"); err != nil {
			b.Fatal(err)
		}
	}
}
