package replicator_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/replicator"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// roundTrips counts the round trips a go-redis client makes: one per
// command, one per pipeline.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmds)
	}
}

// counted is a replicator on a real Redis whose round trips are counted,
// syncing through a zero-latency fake doveadm.
func counted(tb testing.TB) (*replicator.Replicator, *roundTrips) {
	tb.Helper()
	srv := redistest.Start(tb)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	tb.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	if err := st.LoadScripts(context.Background()); err != nil {
		tb.Fatal(err)
	}
	rt := &roundTrips{}
	rdb.AddHook(rt)
	dove := doveadmtest.NewServer(tb, "mail-a", nil)
	hosts := doveadm.NewHostMap(doveadm.Endpoint{Name: "mail-a", URL: dove.APIURL(), Password: doveadmtest.Password, Destination: "tcp:mail-b:12345"})
	o := replicator.Defaults
	o.Owner = "bench"
	r := replicator.New(o, st, doveadm.NewHTTP(nil, 10*time.Second), hosts, nil, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	return r, rt
}

// The round-trip budget per decision is part of the design (docs/sync.md):
// at most 3 for a change already covered, at most 6 for one that runs
// dsync (lock renewals aside; a zero-latency dsync needs none).
func TestRoundTripsRealRedis_PerDecision(t *testing.T) {
	r, rt := counted(t)
	ctx := context.Background()
	old := time.Now().Add(-time.Minute)

	rt.n.Store(0)
	res, err := r.Replicate(ctx, change.Request{User: "u1", Host: "mail-a", Time: time.Now()})
	if err != nil || res.Outcome != change.Synced {
		t.Fatalf("%+v %v", res, err)
	}
	if n := rt.n.Load(); n > 6 {
		t.Errorf("a change that runs dsync took %d round trips, want at most 6", n)
	} else {
		t.Logf("dsync decision: %d round trips", n)
	}

	rt.n.Store(0)
	res, err = r.Replicate(ctx, change.Request{User: "u1", Host: "mail-a", Time: old})
	if err != nil || res.Outcome != change.Covered {
		t.Fatalf("%+v %v", res, err)
	}
	if n := rt.n.Load(); n > 3 {
		t.Errorf("a covered change took %d round trips, want at most 3", n)
	} else {
		t.Logf("covered decision: %d round trips", n)
	}
}

func BenchmarkDecisionRealRedis(b *testing.B) {
	for _, tc := range []struct {
		name string
		at   func() time.Time
		want change.Outcome
	}{
		{"covered", func() time.Time { return time.Now().Add(-time.Hour) }, change.Covered},
		{"dsync", time.Now, change.Synced},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r, rt := counted(b)
			ctx := context.Background()
			const users = 1000
			for i := 0; i < users; i++ {
				if _, err := r.Replicate(ctx, change.Request{User: fmt.Sprint("u", i), Time: time.Now()}); err != nil {
					b.Fatal(err)
				}
			}
			rt.n.Store(0)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := r.Replicate(ctx, change.Request{User: fmt.Sprint("u", i%users), Time: tc.at()})
				if err != nil || res.Outcome != tc.want {
					b.Fatalf("%+v %v", res, err)
				}
			}
			b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
		})
	}
}
