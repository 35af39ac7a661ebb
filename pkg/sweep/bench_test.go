package sweep

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// httpSender sends each request as the sync function does: a CloudEvent
// over HTTP, here to a Broker that takes everything at once.
type httpSender struct{ s *sink.Sender }

func (h httpSender) Send(ctx context.Context, r Request) error {
	ev, err := contract.SweepReplication(r.Sweep, change.Request{User: r.User, Host: r.Host, Full: r.Full, Time: r.Time}, string(r.Reason))
	if err != nil {
		return err
	}
	return h.s.Send(ctx, ev)
}

// BenchmarkIntegrationRedis_Sweep100000 sweeps 100,000 users with the
// default batch size and no pause: a first sweep where every user is due
// (never replicated: 200 batches of 500 requests), and one where every
// user is up to date (the scan limit sets the steps). Real Redis, the fake
// doveadm and a local HTTP Broker stand-in, all on loopback:
//
//	go test ./pkg/sweep -run '^$' -bench Sweep100000 -benchtime 1x
func BenchmarkIntegrationRedis_Sweep100000(b *testing.B) {
	const n = 100_000
	all := make([]string, n)
	for i := range all {
		all[i] = fmt.Sprintf("user%06d@example.org", i)
	}
	o := Defaults
	o.BatchInterval = 0
	f := newFixture(b, o, all...)
	f.useRealRedis(b)
	br := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	defer br.Close()
	s, err := sink.New(sink.Options{URL: br.URL, Budget: 2 * time.Second, Retries: 3, Backoff: 50 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	f.sw.snd = httpSender{s}
	ctx := context.Background()
	sweep := func() (list time.Duration, steps int, total time.Duration) {
		start := time.Now()
		res, err := f.sw.Step(ctx, "bench", nil)
		if err != nil {
			b.Fatal(err)
		}
		list = time.Since(start)
		for c := res.Next; c != nil; steps++ {
			r, err := f.sw.Step(ctx, "", c)
			if err != nil {
				b.Fatal(err)
			}
			c = r.Next
		}
		return list, steps, time.Since(start)
	}
	b.ResetTimer()
	for range b.N {
		f.rdb.Del(ctx, state.SweepFullKey)
		list, steps, total := sweep()
		b.ReportMetric(float64(list.Milliseconds()), "list-ms")
		b.ReportMetric(float64((total-list).Milliseconds())/float64(steps), "ms/batch-due")
		b.ReportMetric(float64(steps), "batches-due")
		_, steps, total = sweep()
		b.ReportMetric(float64(total.Milliseconds()), "ms/sweep-up-to-date")
		b.ReportMetric(float64(steps), "steps-up-to-date")
	}
}

// BenchmarkIntegrationRedis_SweepKnown100000 times the listing step of
// --sweep-list known over 100,000 users with a record (read with SCAN,
// added to the candidates), on real Redis:
//
//	go test ./pkg/sweep -run '^$' -bench SweepKnown100000 -benchtime 3x
func BenchmarkIntegrationRedis_SweepKnown100000(b *testing.B) {
	const n = 100_000
	o := Defaults
	o.BatchInterval = 0
	o.List = ListKnown
	f := newFixture(b, o)
	f.useRealRedis(b)
	ctx := context.Background()
	p := f.rdb.Pipeline()
	for i := range n {
		p.HSet(ctx, state.UserKey(fmt.Sprintf("user%06d@example.org", i)), state.FieldLastStart, "1")
		if i%1000 == 999 {
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		res, err := f.sw.Step(ctx, "bench", nil)
		if err != nil || res.Outcome != Started {
			b.Fatalf("%+v %v", res, err)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "list-ms")
		b.StopTimer()
		if st, _ := f.st.SweepStatus(ctx); st.Total != n {
			b.Fatalf("%d candidates, want %d", st.Total, n)
		}
		f.rdb.Del(ctx, state.SweepLockKey, state.SweepKey)
		b.StartTimer()
	}
}
