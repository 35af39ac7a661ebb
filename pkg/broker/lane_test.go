package broker

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	brokerconfig "github.com/dovewarden/dovewarden-knative/config/broker"
)

// blocker is a subscriber whose deliveries wait until released.
type blocker struct {
	release chan struct{}
	started atomic.Int64
}

func newBlocker() *blocker { return &blocker{release: make(chan struct{})} }

func (b *blocker) handle(ctx context.Context, _ cloudevents.Event) (*cloudevents.Event, protocol.Result) {
	b.started.Add(1)
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return nil, nil
}

// TestLanes_LowBacklogNeverDelaysHigh (invariant 4): with the real
// manifests, the low lane's subscriber is stuck and its queue full, yet
// new mail goes through the high lane at once.
func TestLanes_LowBacklogNeverDelaysHigh(t *testing.T) {
	cfg, err := Load(brokerconfig.FS)
	if err != nil {
		t.Fatal(err)
	}
	low, high := newBlocker(), newRecorder()
	defer close(low.release)
	b, reg := start(t, cfg, Options{QueueSize: 20, Workers: 2, Handlers: map[string]Handler{
		"dovewarden-sync-low": low.handle, "dovewarden-sync-high": high.handle,
	}})
	ctx := context.Background()
	var full error
	for i := 0; full == nil; i++ {
		full = b.Publish(ctx, event("low-"+strconv.Itoa(i), typeChanged, "low"))
		if i > 100 {
			t.Fatal("the low lane never filled up")
		}
	}
	var qf *QueueFullError
	if !errors.As(full, &qf) || qf.Trigger != "sync-low" {
		t.Fatalf("Publish to a full lane: %v", full)
	}
	eventually(t, "both low workers stuck", func() bool { return low.started.Load() == 2 })
	for i := range 50 {
		start := time.Now()
		if err := b.Publish(ctx, event("high-"+strconv.Itoa(i), typeChanged, "high")); err != nil {
			t.Fatalf("high-lane publish: %v", err)
		}
		high.next(t)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("high-lane event %d took %v behind a stuck low lane", i, d)
		}
	}
	if got := counter(t, reg, "dovewarden_broker_queue_depth", map[string]string{"trigger": "sync-low"}); got != 20 {
		t.Errorf("low queue depth %v, want 20", got)
	}
	if got := counter(t, reg, "dovewarden_broker_events_rejected_total", map[string]string{"trigger": "sync-low"}); got != 1 {
		t.Errorf("rejected %v", got)
	}
}

// TestLanes_RetryDoesNotHoldTheWorker: an event waiting for its retry
// does not keep the lane's only worker from the next event.
func TestLanes_RetryDoesNotHoldTheWorker(t *testing.T) {
	// Linear backoff: the first retry fires at once, the second after a
	// minute.
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 2\n    backoffPolicy: linear\n    backoffDelay: PT1M\n"))
	rec := newRecorder()
	rec.answer = func(n int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		if ev.ID() == "slow" {
			return nil, cehttp.NewResult(503, "later")
		}
		return nil, nil
	}
	b, _ := start(t, cfg, Options{Workers: 1, QueueSize: 5, Handlers: map[string]Handler{"sub": rec.handle}})
	ctx := context.Background()
	if err := b.Publish(ctx, event("slow", "x", "")); err != nil {
		t.Fatal(err)
	}
	rec.next(t) // first try
	rec.next(t) // immediate retry; the next waits a minute
	if err := b.Publish(ctx, event("next", "x", "")); err != nil {
		t.Fatal(err)
	}
	if got := rec.next(t); got.ID() != "next" {
		t.Fatalf("got %s", got.ID())
	}
}

// TestLanes_Backpressure: a full queue refuses events (all or none across
// matching Triggers), memory stays bounded, and room frees up again.
func TestLanes_Backpressure(t *testing.T) {
	cfg := mustLoad(t,
		typeTrigger("roomy", "x", "fast", ""),
		trigger("tight", "  filters:\n  - exact:\n      type: x\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: slow\n"),
	)
	cfg.Triggers[1].QueueSize, cfg.Triggers[1].Workers = 3, 1
	fast, slow := newRecorder(), newBlocker()
	b, _ := start(t, cfg, Options{QueueSize: 100, Handlers: map[string]Handler{"fast": fast.handle, "slow": slow.handle}})
	ctx := context.Background()
	accepted := 0
	for i := range 50 {
		err := b.Publish(ctx, event(strconv.Itoa(i), "x", ""))
		switch {
		case err == nil:
			accepted++
		case errors.Is(err, ErrQueueFull):
		default:
			t.Fatal(err)
		}
	}
	// tight holds 3 queued + 1 in its worker.
	if accepted != 4 {
		t.Errorf("accepted %d, want 4", accepted)
	}
	for range accepted {
		fast.next(t)
	}
	fast.quiet(t) // refused events reached no Trigger at all
	tight := b.lanes[1]
	if h := tight.held.Load(); h != 4 {
		t.Errorf("tight holds %d", h)
	}
	eventually(t, "tight's worker busy", func() bool { return slow.started.Load() == 1 })
	load := func() (queued, inFlight int64) {
		for _, l := range b.Lanes() {
			if l.Trigger == "tight" {
				return l.Queued, l.InFlight
			}
		}
		t.Fatalf("no lane tight in %+v", b.Lanes())
		return 0, 0
	}
	if q, f := load(); q != 3 || f != 1 {
		t.Errorf("Lanes reports tight with %d queued and %d in flight, want 3 and 1", q, f)
	}
	close(slow.release)
	eventually(t, "tight drained", func() bool { return tight.held.Load() == 0 })
	eventually(t, "Lanes to report tight empty", func() bool { q, f := load(); return q == 0 && f == 0 })
	if err := b.Publish(ctx, event("again", "x", "")); err != nil {
		t.Errorf("after draining: %v", err)
	}
}

// TestLanes_BackpressureByBytes: a lane refuses what would take it past
// QueueBytes, however few events it holds; an empty lane takes even an
// event larger than that; what is delivered frees its bytes.
func TestLanes_BackpressureByBytes(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "slow", ""))
	slow := newBlocker()
	b, _ := start(t, cfg, Options{Workers: 1, QueueBytes: 1 << 20, Handlers: map[string]Handler{"slow": slow.handle}})
	ctx := context.Background()
	big := func(id string, n int) cloudevents.Event {
		ev := event(id, "x", "")
		ev.DataEncoded = make([]byte, n)
		return ev
	}
	if err := b.Publish(ctx, big("huge", 2<<20)); err != nil {
		t.Fatalf("an empty lane refused an event larger than its bytes: %v", err)
	}
	eventually(t, "the huge event in delivery", func() bool { return slow.started.Load() == 1 })
	err := b.Publish(ctx, big("next", 1000))
	var full *QueueFullError
	if !errors.As(err, &full) || !full.Bytes || !strings.Contains(err.Error(), "size") {
		t.Fatalf("a lane past its bytes took another event: %v", err)
	}
	if n := b.lanes[0].held.Load(); n != 1 {
		t.Errorf("the lane holds %d events after the refusal, want 1", n)
	}
	close(slow.release)
	eventually(t, "the lane drained", func() bool { return b.lanes[0].bytes.Load() == 0 && b.lanes[0].held.Load() == 0 })

	// Events of 100 KiB, the first stuck in delivery: 1 MiB holds ten of
	// them with their attributes, not eleven.
	slow2 := newBlocker()
	b2, _ := start(t, cfg, Options{Workers: 1, QueueBytes: 1 << 20, Handlers: map[string]Handler{"slow": slow2.handle}})
	accepted := 0
	for i := range 20 {
		if err := b2.Publish(ctx, big(strconv.Itoa(i), 100<<10)); err == nil {
			accepted++
		}
	}
	if accepted != 10 {
		t.Errorf("accepted %d events of 100 KiB into 1 MiB, want 10", accepted)
	}
	close(slow2.release)
}

// TestLanes_DeadLetterTaskHoldsItsDataOnce: an event waiting for a retry
// to its failing dead-letter sink is charged against the lane's bytes as
// one event, so it holds its data once, not the subscriber's copy beside
// the sink's; the sink, and Shutdown's answer, still get all of it.
func TestLanes_DeadLetterTaskHoldsItsDataOnce(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 1\n    backoffPolicy: exponential\n    backoffDelay: PT1H\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
	sub, dls := newRecorder(), newRecorder()
	sub.answer, dls.answer = fail(400), fail(503)
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": sub.handle, "dls": dls.handle}})
	const n = 100 << 10
	ev := event("e1", "x", "")
	ev.DataEncoded = make([]byte, n)
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if got := dls.next(t); len(got.Data()) != n {
		t.Errorf("the dead-letter sink got %d bytes of data, want %d", len(got.Data()), n)
	}
	l := b.lanes[0]
	var waiting *task
	eventually(t, "the event waiting an hour for its retry to the sink", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for w := range l.timers {
			waiting = w
		}
		return waiting != nil
	})
	l.mu.Lock()
	data := len(waiting.ev.DataEncoded) + len(waiting.dead.DataEncoded)
	l.mu.Unlock()
	if charged := l.bytes.Load(); int64(data) > charged {
		t.Errorf("the task holds %d bytes of data and is charged %d", data, charged)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	held, err := b.Shutdown(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Phase != PhaseDeadLetter || len(held[0].Event.Data()) != n || held[0].Event.Extensions()[ExtErrorCode] != "400" {
		t.Errorf("Shutdown handed back %d events; want e1 for the sink with its %d bytes of data", len(held), n)
	}
}

// TestShutdown_DropsQueuedAndReportsThem: Shutdown stops taking events,
// lets the delivery in flight finish, and reports what it dropped.
func TestShutdown_DropsQueuedAndReportsThem(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT1H\n"),
		typeTrigger("r", "retry.me", "failing", "  delivery:\n    retry: 3\n    backoffPolicy: exponential\n    backoffDelay: PT1H\n"))
	slow := newBlocker()
	failing := newRecorder()
	failing.answer = fail(503)
	b, err := New(cfg, Options{Workers: 1, Handlers: map[string]Handler{"sub": slow.handle, "failing": failing.handle}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 4 {
		if err := b.Publish(ctx, event(strconv.Itoa(i), "x", "")); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publish(ctx, event("r1", "retry.me", "")); err != nil {
		t.Fatal(err)
	}
	failing.next(t) // now waiting an hour for its retry
	eventually(t, "first delivery in flight", func() bool { return slow.started.Load() == 1 })
	go func() {
		time.Sleep(50 * time.Millisecond)
		close(slow.release) // the delivery in flight finishes during shutdown
	}()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	held, err := b.Shutdown(sctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, h := range held {
		ids = append(ids, h.Event.ID())
		trigger := "t"
		if h.Event.ID() == "r1" {
			trigger = "r"
		}
		if h.Phase != PhaseDeliver || h.TTL != DefaultTTL || h.Trigger != trigger {
			t.Errorf("held %s: Trigger %q, phase %q, ttl %d", h.Event.ID(), h.Trigger, h.Phase, h.TTL)
		}
	}
	sort.Strings(ids)
	if want := []string{"1", "2", "3", "r1"}; !slices.Equal(ids, want) { // 3 queued + 1 waiting for a retry
		t.Errorf("undelivered %v, want %v", ids, want)
	}
	if slow.started.Load() != 1 {
		t.Errorf("%d deliveries started", slow.started.Load())
	}
	if err := b.Publish(ctx, event("late", "x", "")); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Shutdown: %v", err)
	}
}

// TestShutdown_HoldsWhatAFunctionEmitsWhileItStops: an event an
// in-process function makes of its own accord while the broker stops (the
// sync function's replication.failed of an attempt that fails during the
// drain) is held with the lanes' undelivered events, for each Trigger it
// matches, rather than refused; an event from outside (the ingress,
// Publish) is refused, and so is an emitted one once Shutdown has
// answered.
func TestShutdown_HoldsWhatAFunctionEmitsWhileItStops(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", ""), typeTrigger("alerts", "failed", "hook", ""),
		typeTrigger("audit", "failed", "hook", ""))
	slow := newBlocker()
	b, err := New(cfg, Options{Workers: 1, Handlers: map[string]Handler{"sub": slow.handle, "hook": newRecorder().handle}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Publish(ctx, event("1", "x", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivery in flight", func() bool { return slow.started.Load() == 1 })
	type answer struct {
		held []Held
		err  error
	}
	done := make(chan answer)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		h, err := b.Shutdown(sctx)
		done <- answer{h, err}
	}()
	eventually(t, "the stop begun", func() bool { return errors.Is(b.Publish(ctx, event("p", "unrouted", "")), ErrClosed) })
	if err := b.Emit(ctx, event("f1", "failed", "")); err != nil {
		t.Fatalf("Emit while the broker stops: %v", err)
	}
	close(slow.release)
	a := <-done
	if a.err != nil {
		t.Fatal(a.err)
	}
	var got []string
	for _, h := range a.held {
		if h.Phase != PhaseDeliver || h.TTL != DefaultTTL {
			t.Errorf("held %s for %s: phase %q, ttl %d", h.Event.ID(), h.Trigger, h.Phase, h.TTL)
		}
		got = append(got, h.Event.ID()+"@"+h.Trigger)
	}
	sort.Strings(got)
	if want := []string{"f1@alerts", "f1@audit"}; !slices.Equal(got, want) {
		t.Errorf("held %v, want %v", got, want)
	}
	if err := b.Emit(ctx, event("f2", "failed", "")); !errors.Is(err, ErrClosed) {
		t.Errorf("Emit after Shutdown answered: %v, want ErrClosed", err)
	}
}

// TestShutdown_CancelsInFlightAtDeadline: a delivery that does not finish
// in time is cancelled and Shutdown says so.
func TestShutdown_CancelsInFlightAtDeadline(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", ""))
	slow := newBlocker()
	b, err := New(cfg, Options{Handlers: map[string]Handler{"sub": slow.handle}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), event("1", "x", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivery in flight", func() bool { return slow.started.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := b.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestShutdown_HandsBackADeliveryThatOutlastsIt: a handler that does not
// return when cancelled (the sync function's own cleanup can take seconds)
// still runs when Shutdown gives up waiting for it. Its event is in
// Shutdown's answer, as it was when the delivery began, whatever the
// handler answers later: counted once, handed back once.
func TestShutdown_HandsBackADeliveryThatOutlastsIt(t *testing.T) {
	for _, late := range []struct {
		name   string
		answer protocol.Result
	}{{"fails late", cehttp.NewResult(503, "busy")}, {"succeeds late", nil}} {
		t.Run(late.name, func(t *testing.T) {
			cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 3\n"))
			started, release, returned := make(chan struct{}), make(chan struct{}), make(chan struct{})
			h := func(context.Context, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
				defer close(returned)
				close(started)
				<-release // ignores its context
				return nil, late.answer
			}
			b, reg := start(t, cfg, Options{Workers: 1, Handlers: map[string]Handler{"sub": h}})
			if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
				t.Fatal(err)
			}
			<-started
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			held, err := b.Shutdown(ctx)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown: %v", err)
			}
			close(release)
			<-returned
			time.Sleep(50 * time.Millisecond) // the worker records the late answer
			if len(held) != 1 || held[0].Event.ID() != "e1" || held[0].Phase != PhaseDeliver {
				t.Fatalf("Shutdown handed back %+v; want e1, to deliver", held)
			}
			if n := counter(t, reg, "dovewarden_broker_events_dropped_total", map[string]string{"trigger": "t", "reason": dropShutdown}); n != 1 {
				t.Errorf("%v events counted as dropped at shutdown, want 1", n)
			}
		})
	}
}
