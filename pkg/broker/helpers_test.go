package broker

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	typeChanged   = "org.dovewarden.mailbox.changed"
	typeRequested = "org.dovewarden.replication.requested"
	typeSweep     = "org.dovewarden.sweep.requested"
	typeSucceeded = "org.dovewarden.replication.succeeded"
	typeFailed    = "org.dovewarden.replication.failed"
)

// manifests builds a manifest folder from YAML documents.
func manifests(docs ...string) fstest.MapFS {
	return fstest.MapFS{"triggers.yaml": {Data: []byte(strings.Join(docs, "\n---\n"))}}
}

// trigger is a Trigger manifest for broker "b" with the given spec body
// (indented by two spaces).
func trigger(name, spec string) string {
	return "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: " + name +
		"\nspec:\n  broker: b\n" + spec
}

const brokerDoc = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n"

func mustLoad(t *testing.T, docs ...string) *Config {
	t.Helper()
	cfg, err := Load(manifests(append([]string{brokerDoc}, docs...)...))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

// start makes a broker and shuts it down when the test ends.
func start(t *testing.T, cfg *Config, o Options) (*Broker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	b, err := New(cfg, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b.Shutdown(ctx)
	})
	return b, reg
}

func event(id, typ, priority string) cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetSource("mail-a.test")
	ev.SetType(typ)
	ev.SetSubject("u1")
	if priority != "" {
		ev.SetExtension("priority", priority)
	}
	return ev
}

// recorder is an in-process subscriber that records what it gets and
// answers with answer (nil: 200, no reply).
type recorder struct {
	mu     sync.Mutex
	got    []cloudevents.Event
	times  []time.Time
	ch     chan cloudevents.Event
	answer func(n int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result)
}

func newRecorder() *recorder { return &recorder{ch: make(chan cloudevents.Event, 1000)} }

func (r *recorder) handle(_ context.Context, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
	r.mu.Lock()
	r.got = append(r.got, ev)
	r.times = append(r.times, time.Now())
	n := len(r.got)
	r.mu.Unlock()
	r.ch <- ev
	if r.answer != nil {
		return r.answer(n, ev)
	}
	return nil, nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// next waits (boundedly) for the next delivery.
func (r *recorder) next(t *testing.T) cloudevents.Event {
	t.Helper()
	select {
	case ev := <-r.ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery within 5s")
	}
	return cloudevents.Event{}
}

// quiet asserts nothing more is delivered for a short while.
func (r *recorder) quiet(t *testing.T) {
	t.Helper()
	select {
	case ev := <-r.ch:
		t.Fatalf("unexpected delivery of %s (%s)", ev.ID(), ev.Type())
	case <-time.After(150 * time.Millisecond):
	}
}

// eventually waits until cond holds, failing after 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counter reads a counter of reg by name and labels.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}
