package syncer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/replicator"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// benchHandler is the sync handler on a real Redis and a zero-latency fake
// doveadm: what remains is the cost of the decisions themselves.
func benchHandler(b *testing.B) *Handler {
	b.Helper()
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 128})
	b.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	if err := st.LoadScripts(context.Background()); err != nil {
		b.Fatal(err)
	}
	dove := doveadmtest.NewServer(b, "mail-a", nil)
	hosts := doveadm.NewHostMap(doveadm.Endpoint{Name: "mail-a", URL: dove.APIURL(), Password: doveadmtest.Password, Destination: "tcp:mail-b:12345"})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	o := replicator.Defaults
	o.Owner = "bench"
	repl := replicator.New(o, st, doveadm.NewHTTP(nil, 10*time.Second), hosts, nil, reg, log)
	return NewHandler(Options{Budget: time.Minute}, repl, reg, log)
}

// events are changes of users round-robin, each newer than the last
// dsync of its user, so every decision runs a dsync unless another
// goroutine holds the user (then it is merged).
func benchEvents(b *testing.B, users int) []cloudevents.Event {
	evs := make([]cloudevents.Event, users)
	for i := range evs {
		ev, err := contract.FromChange(change.Change{ID: fmt.Sprint("c", i), User: fmt.Sprint("user", i), Host: "mail-a",
			Priority: change.High, Event: "imap_command_finished", Command: "APPEND"})
		if err != nil {
			b.Fatal(err)
		}
		evs[i] = ev
	}
	return evs
}

func BenchmarkHandleRealRedis(b *testing.B) {
	h := benchHandler(b)
	evs := benchEvents(b, 10000)
	var next, replies atomic.Int64
	// Many requests in flight, as Knative's containerConcurrency allows:
	// each decision mostly waits on Redis and doveadm.
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := evs[next.Add(1)%int64(len(evs))]
			ev.SetTime(time.Now())
			reply, err := h.Handle(context.Background(), ev)
			if err != nil {
				b.Error(err)
				return
			}
			if reply != nil {
				replies.Add(1)
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "decisions/s")
	b.ReportMetric(float64(replies.Load())/float64(b.N), "dsyncs/decision")
}

// Through the HTTP receiver, binary mode, as the Broker calls it.
func BenchmarkServeHTTPRealRedis(b *testing.B) {
	h := benchHandler(b)
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	evs := benchEvents(b, 10000)
	var next atomic.Int64
	// Many requests in flight, as Knative's containerConcurrency allows:
	// each decision mostly waits on Redis and doveadm.
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := evs[next.Add(1)%int64(len(evs))]
			ev.SetTime(time.Now())
			req, err := cloudevents.NewHTTPRequestFromEvent(context.Background(), srv.URL, ev)
			if err != nil {
				b.Error(err)
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 && resp.StatusCode != 202 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "decisions/s")
}

// stampedEvent is a change ingest stamped with the Redis clock at at.
func stampedEvent(b *testing.B, user string, at time.Time) cloudevents.Event {
	ev, err := contract.FromChange(change.Change{ID: "c-" + user, User: user, Host: "mail-a", Time: at, Observed: at,
		Priority: change.High, Event: "imap_command_finished", Command: "APPEND", Mailbox: "INBOX"})
	if err != nil {
		b.Fatal(err)
	}
	return ev
}

// The embedded Redis of local mode (miniredis): a change already covered
// by a dsync this process saw succeed (no round trip), and one that runs
// a dsync (its two decision scripts run in miniredis's Lua interpreter).
func BenchmarkHandleEmbeddedRedis(b *testing.B) {
	for _, tc := range []struct {
		name    string
		covered bool
	}{{"covered", true}, {"dsync", false}} {
		b.Run(tc.name, func(b *testing.B) {
			f := newFixture(b)
			const users = 1000
			evs := make([]cloudevents.Event, users)
			for i := range evs {
				user := fmt.Sprint("user", i)
				if tc.covered {
					if _, err := f.h.Handle(context.Background(), stampedEvent(b, user, time.Now())); err != nil {
						b.Fatal(err)
					}
				}
				evs[i] = stampedEvent(b, user, time.Now().Add(-time.Minute))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				ev := evs[i%users]
				if !tc.covered {
					ev = stampedEvent(b, ev.Subject(), time.Now())
				}
				reply, err := f.h.Handle(context.Background(), ev)
				if err != nil {
					b.Fatal(err)
				}
				if (reply != nil) == tc.covered {
					b.Fatalf("covered %v but reply %v", tc.covered, reply)
				}
			}
		})
	}
}
