package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

func typeTrigger(name, typ, subscriber, delivery string) string {
	return trigger(name, "  filter:\n    attributes:\n      type: "+typ+"\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: "+subscriber+"\n"+delivery)
}

func fail(code int) func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
	return func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		return nil, cehttp.NewResult(code, "no luck %d", code)
	}
}

func TestDelivery_OverlappingTriggersDeliverTwice(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("one", "x", "sub", ""), trigger("two", "  filters:\n  - prefix:\n      type: x\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: sub\n"))
	rec := newRecorder()
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	rec.next(t)
	rec.next(t)
	rec.quiet(t)
}

func TestDelivery_EventAsDelivered(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", ""))
	rec := newRecorder()
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	ev := event("e1", "x", "high")
	ev.SetExtension("count", 5)
	ev.SetExtension(ExtTTL, 9)
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	got := rec.next(t)
	ext := got.Extensions()
	if ext["count"] != "5" || ext["priority"] != "high" {
		t.Errorf("extensions not as the HTTP binding delivers them: %#v", ext)
	}
	if _, ok := ext[ExtTTL]; ok {
		t.Error("subscriber sees the broker's TTL")
	}
	if at, ok := ext[ExtArrivalTime].(string); !ok || at == "" {
		t.Errorf("no %s: %#v", ExtArrivalTime, ext)
	}
}

func TestDelivery_RetryWithExponentialBackoff(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 3\n    backoffPolicy: exponential\n    backoffDelay: PT0.1S\n"))
	rec := newRecorder()
	rec.answer = func(n int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		if n <= 3 {
			return nil, cehttp.NewResult(http.StatusServiceUnavailable, "busy")
		}
		return nil, nil
	}
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		rec.next(t)
	}
	rec.quiet(t)
	rec.mu.Lock()
	times := rec.times
	rec.mu.Unlock()
	// Knative: delay × 2^(n-1) before retry n.
	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		if got := times[i+1].Sub(times[i]); got < want*9/10 || got > want+time.Second {
			t.Errorf("wait before retry %d: %v, want about %v", i+1, got, want)
		}
	}
	if got := counter(t, reg, "dovewarden_broker_retries_total", map[string]string{"trigger": "t"}); got != 3 {
		t.Errorf("retries metric %v", got)
	}
	if got := counter(t, reg, "dovewarden_broker_deliveries_total", map[string]string{"trigger": "t", "outcome": "retriable"}); got != 3 {
		t.Errorf("retriable deliveries %v", got)
	}
}

func TestDelivery_LinearBackoffFirstRetryAtOnce(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 2\n    backoffPolicy: linear\n    backoffDelay: PT0.3S\n"))
	rec := newRecorder()
	rec.answer = fail(http.StatusTooManyRequests)
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		rec.next(t)
	}
	rec.mu.Lock()
	first, second := rec.times[1].Sub(rec.times[0]), rec.times[2].Sub(rec.times[1])
	rec.mu.Unlock()
	if first > 250*time.Millisecond || second < 270*time.Millisecond || second > 1300*time.Millisecond {
		t.Errorf("waits %v then %v; want about 0 then 300ms", first, second)
	}
}

// TestDelivery_Classification: which answers are retried (Knative's
// SelectiveRetry) and which go straight to the dead-letter sink, with the
// knativeerror* extensions.
func TestDelivery_Classification(t *testing.T) {
	for code, retried := range map[int]bool{
		400: false, 401: false, 403: false, 410: false, 413: false, 422: false, 301: false,
		404: true, 408: true, 409: true, 429: true, 500: true, 502: true, 503: true,
	} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 2\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
			sub, dls := newRecorder(), newRecorder()
			sub.answer = fail(code)
			b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": sub.handle, "dls": dls.handle}})
			if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
				t.Fatal(err)
			}
			dead := dls.next(t)
			attempts := 1
			if retried {
				attempts = 3
			}
			if sub.count() != attempts {
				t.Errorf("%d attempts, want %d", sub.count(), attempts)
			}
			ext := dead.Extensions()
			wantData := base64.StdEncoding.EncodeToString([]byte("no luck " + strconv.Itoa(code)))
			if ext[ExtErrorCode] != strconv.Itoa(code) || ext[ExtErrorDest] != "inprocess://sub" || ext[ExtErrorData] != wantData {
				t.Errorf("dead-letter extensions %#v", ext)
			}
			if dead.ID() != "e1" || dead.Type() != "x" {
				t.Errorf("dead-lettered %s %s", dead.ID(), dead.Type())
			}
			eventually(t, "dead-lettered counted", func() bool {
				return counter(t, reg, "dovewarden_broker_dead_lettered_total", map[string]string{"trigger": "t"}) == 1
			})
		})
	}
}

func TestDelivery_NoDeadLetterSinkDropsAndCounts(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 1\n"))
	rec := newRecorder()
	rec.answer = func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		return nil, errors.New("boom") // a plain error is a 500
	}
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	rec.next(t)
	rec.next(t)
	eventually(t, "drop counted", func() bool {
		return counter(t, reg, "dovewarden_broker_events_dropped_total", map[string]string{"trigger": "t", "reason": dropNoDLS}) == 1
	})
	rec.quiet(t)
}

// TestDelivery_TriggerWithoutDeadLetterSinkUsesTheBrokers: as on a
// cluster, a Trigger whose delivery sets no deadLetterSink falls back to
// the Broker's, while its retries are its own.
func TestDelivery_TriggerWithoutDeadLetterSinkUsesTheBrokers(t *testing.T) {
	broker := brokerDoc + "spec:\n  delivery:\n    retry: 5\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: sink\n"
	cfg, err := Load(manifests(broker, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 1\n")))
	if err != nil {
		t.Fatal(err)
	}
	sub, sink := newRecorder(), newRecorder()
	sub.answer = fail(http.StatusServiceUnavailable)
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": sub.handle, "sink": sink.handle}})
	if l := b.Lanes(); len(l) != 1 || l[0].DeadLetterSink != "inprocess://sink" {
		t.Errorf("lanes %+v; want the Broker's dead-letter sink", l)
	}
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	dead := sink.next(t)
	if dead.ID() != "e1" || dead.Extensions()[ExtErrorCode] != "503" {
		t.Errorf("dead-letter sink got %s with %v", dead.ID(), dead.Extensions())
	}
	// The sink gets the event after the last attempt.
	if sub.count() != 2 {
		t.Errorf("%d attempts; want 2 (the Trigger's retry: 1, not the Broker's 5)", sub.count())
	}
}

func TestDelivery_DeadLetterSinkFailingIsRetriedThenDropped(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 1\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
	sub, dls := newRecorder(), newRecorder()
	sub.answer, dls.answer = fail(500), fail(500)
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": sub.handle, "dls": dls.handle}})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	dls.next(t)
	dls.next(t)
	eventually(t, "drop counted", func() bool {
		return counter(t, reg, "dovewarden_broker_events_dropped_total", map[string]string{"reason": dropDLSFailed}) == 1
	})
}

// TestDelivery_ReplyIsRoutedAgain: a reply goes back into the broker and
// the Triggers route it like any event.
func TestDelivery_ReplyIsRoutedAgain(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("a", typeChanged, "sync", ""), typeTrigger("b", typeSucceeded, "audit", ""))
	sync, audit := newRecorder(), newRecorder()
	sync.answer = func(_ int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		r := cloudevents.NewEvent()
		r.SetID("r-" + ev.ID())
		r.SetSource("sync")
		r.SetType(typeSucceeded)
		r.SetSubject(ev.Subject())
		return &r, nil
	}
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sync": sync.handle, "audit": audit.handle}})
	if err := b.Publish(context.Background(), event("e1", typeChanged, "high")); err != nil {
		t.Fatal(err)
	}
	sync.next(t)
	got := audit.next(t)
	if got.ID() != "r-e1" || got.Subject() != "u1" {
		t.Errorf("audit got %s for %s", got.ID(), got.Subject())
	}
	if _, ok := got.Extensions()[ExtTTL]; ok {
		t.Error("reply delivered with the TTL")
	}
	sync.quiet(t)
	eventually(t, "reply counted", func() bool {
		return counter(t, reg, "dovewarden_broker_replies_total", map[string]string{"trigger": "a"}) == 1 &&
			counter(t, reg, "dovewarden_broker_events_published_total", map[string]string{"source": sourceReply}) == 1
	})
}

// TestDelivery_ReplyLoopEndsAtTTL: a subscriber that replies with an event
// its own Trigger matches loops only DefaultTTL times, as on Knative.
func TestDelivery_ReplyLoopEndsAtTTL(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("loop", "x", "echo", ""))
	rec := newRecorder()
	rec.answer = func(_ int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) { return &ev, nil }
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"echo": rec.handle}})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "loop ended", func() bool {
		return counter(t, reg, "dovewarden_broker_events_dropped_total", map[string]string{"trigger": "loop"}) == 1
	})
	if n := rec.count(); n != DefaultTTL {
		t.Errorf("%d deliveries, want %d", n, DefaultTTL)
	}
}

// TestDelivery_HandlerAnswers: the handler's answer means what it would
// behind sdk-go's HTTP receiver.
func TestDelivery_HandlerAnswers(t *testing.T) {
	reply := event("r", "reply.type", "")
	for name, tc := range map[string]struct {
		answer   func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result)
		attempts int
		replied  bool
		deadCode string
	}{
		"nil":   {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) { return nil, nil }, 1, false, ""},
		"ACK":   {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) { return nil, protocol.ResultACK }, 1, false, ""},
		"reply": {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) { return &reply, nil }, 1, true, ""},
		"202 and reply": {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
			return &reply, cehttp.NewResult(202, "ok")
		}, 1, true, ""},
		// sdk-go's receiver writes the message of a 2xx Result as the
		// body: not empty, not a CloudEvent, so a 502 as over HTTP.
		"202 with a message, no reply": {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
			return nil, cehttp.NewResult(202, "accepted")
		}, 2, false, "502"},
		"202 with no message": {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
			return nil, cehttp.NewResult(202, "")
		}, 1, false, ""},
		"error, reply": {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) { return &reply, errors.New("x") }, 2, false, "500"},
		"NACK":         {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) { return nil, protocol.ResultNACK }, 2, false, "500"},
		"panic":        {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) { panic("bug") }, 2, false, "500"},
		"invalid reply": {func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
			r := cloudevents.NewEvent()
			return &r, nil
		}, 1, false, "400"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 1\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"), typeTrigger("r", "reply.type", "replies", ""))
			sub, dls, replies := newRecorder(), newRecorder(), newRecorder()
			sub.answer = tc.answer
			b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": sub.handle, "dls": dls.handle, "replies": replies.handle}})
			if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
				t.Fatal(err)
			}
			for range tc.attempts {
				sub.next(t)
			}
			if tc.replied {
				replies.next(t)
			}
			if tc.deadCode != "" {
				if got := dls.next(t).Extensions()[ExtErrorCode]; got != tc.deadCode {
					t.Errorf("knativeerrorcode %v, want %s", got, tc.deadCode)
				}
			}
			sub.quiet(t)
			if !tc.replied && replies.count() > 0 {
				t.Error("a reply was published")
			}
		})
	}
}

// TestDelivery_HandlerMeansWhatItsHTTPReceiverAnswers: a handler that
// answers a 2xx Result with a message and no event fails the same way in
// process as behind sdk-go's HTTP receiver, whose response body is then
// that message: Knative's filter answers 502 for a non-empty body that is
// not a CloudEvent, so the event is retried and dead-lettered.
func TestDelivery_HandlerMeansWhatItsHTTPReceiverAnswers(t *testing.T) {
	accepted := func(context.Context, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		return nil, cehttp.NewResult(http.StatusAccepted, "accepted")
	}
	p, err := cloudevents.NewHTTP()
	if err != nil {
		t.Fatal(err)
	}
	h, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, accepted)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	for name, subscriber := range map[string]string{"in process": "inproc", "HTTP": "remote"} {
		t.Run(name, func(t *testing.T) {
			cfg := mustLoad(t, typeTrigger("t", "x", subscriber, "  delivery:\n    retry: 1\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
			dls := newRecorder()
			b, reg := start(t, cfg, Options{
				Handlers:    map[string]Handler{"inproc": accepted, "dls": dls.handle},
				Subscribers: map[string]string{"remote": srv.URL},
			})
			if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
				t.Fatal(err)
			}
			if code := dls.next(t).Extensions()[ExtErrorCode]; code != "502" {
				t.Errorf("knativeerrorcode %v, want 502", code)
			}
			if n := counter(t, reg, "dovewarden_broker_deliveries_total", map[string]string{"trigger": "t", "outcome": outcomeRetriable}); n != 2 {
				t.Errorf("%v retriable deliveries; want 2 (retry: 1)", n)
			}
		})
	}
}

// TestDelivery_DeadLetterSinkAnyTwoHundredIsDone: as Knative's dispatcher
// does, any 2xx from an HTTP dead-letter sink is a success whatever its
// body (a webhook's "200 text/plain ok", or a CloudEvent, which is not
// published), and the sink is not asked for a reply; the 502 for a 2xx
// whose body is not a CloudEvent is the subscriber's rule only.
func TestDelivery_DeadLetterSinkAnyTwoHundredIsDone(t *testing.T) {
	for name, answer := range map[string]func(w http.ResponseWriter){
		"text": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "ok")
		},
		"CloudEvent": func(w http.ResponseWriter) {
			w.Header().Set("Ce-Specversion", "1.0")
			w.Header().Set("Ce-Id", "from-sink")
			w.Header().Set("Ce-Source", "sink")
			w.Header().Set("Ce-Type", "reply.type")
			w.WriteHeader(http.StatusOK)
		},
	} {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var prefer []string
			sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				prefer = append(prefer, r.Header.Get("Prefer"))
				mu.Unlock()
				answer(w)
			}))
			defer sink.Close()
			cfg := mustLoad(t, typeTrigger("t", "x", "sub", "  delivery:\n    retry: 2\n    deadLetterSink:\n      uri: "+sink.URL+"\n"),
				typeTrigger("r", "reply.type", "replies", ""))
			sub, replies := newRecorder(), newRecorder()
			sub.answer = fail(http.StatusInternalServerError)
			b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": sub.handle, "replies": replies.handle}})
			if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
				t.Fatal(err)
			}
			eventually(t, "dead-lettered", func() bool {
				return counter(t, reg, "dovewarden_broker_dead_lettered_total", map[string]string{"trigger": "t"}) == 1
			})
			replies.quiet(t)
			if n := counter(t, reg, "dovewarden_broker_events_dropped_total", map[string]string{"reason": dropDLSFailed}); n != 0 {
				t.Errorf("%v events counted as dropped because the sink failed", n)
			}
			if n := counter(t, reg, "dovewarden_broker_retries_total", map[string]string{"trigger": "t"}); n != 2 {
				t.Errorf("%v retries; want the subscriber's 2 only", n)
			}
			if n := counter(t, reg, "dovewarden_broker_replies_total", nil); n != 0 {
				t.Errorf("%v replies published", n)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(prefer) != 1 || prefer[0] != "" {
				t.Errorf("the sink got %d requests with Prefer %q; want one, without Prefer", len(prefer), prefer)
			}
		})
	}
}

// TestDelivery_HandlerPastTimeoutIsATimeout: an in-process handler that
// answers after the attempt's timeout fails as an HTTP subscriber that
// times out does (Knative's dispatcher bounds each request with
// http.Client.Timeout): a transport error, retried, then dead-lettered
// with code 500 and "dispatch error: ... context deadline exceeded"; its
// late reply is lost.
func TestDelivery_HandlerPastTimeoutIsATimeout(t *testing.T) {
	late := func(ev cloudevents.Event) *cloudevents.Event {
		time.Sleep(300 * time.Millisecond) // ignores its context
		r := event("r-"+ev.ID(), "reply.type", "")
		return &r
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			t.Error(err)
			return
		}
		reply := late(*ev)
		w.Header().Set("Ce-Specversion", "1.0")
		w.Header().Set("Ce-Id", reply.ID())
		w.Header().Set("Ce-Source", reply.Source())
		w.Header().Set("Ce-Type", reply.Type())
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	for name, tc := range map[string]struct{ subscriber, dest string }{
		"handler": {"slow", "inprocess://slow"},
		"HTTP":    {"remote", srv.URL},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := mustLoad(t, typeTrigger("t", "x", tc.subscriber, "  delivery:\n    retry: 1\n    timeout: PT0.1S\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"),
				typeTrigger("r", "reply.type", "replies", ""))
			sub, dls, replies := newRecorder(), newRecorder(), newRecorder()
			sub.answer = func(_ int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) { return late(ev), nil }
			b, reg := start(t, cfg, Options{
				Handlers:    map[string]Handler{"slow": sub.handle, "dls": dls.handle, "replies": replies.handle},
				Subscribers: map[string]string{"remote": srv.URL},
			})
			if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
				t.Fatal(err)
			}
			dead := dls.next(t)
			ext := dead.Extensions()
			data, _ := base64.StdEncoding.DecodeString(ext[ExtErrorData].(string))
			want := `dispatch error: Post "` + tc.dest + `": context deadline exceeded`
			if ext[ExtErrorCode] != "500" || ext[ExtErrorDest] != tc.dest || string(data) != want {
				t.Errorf("dead-lettered with code %v, dest %v, data %q; want 500, %s, %q", ext[ExtErrorCode], ext[ExtErrorDest], data, tc.dest, want)
			}
			replies.quiet(t)
			for outcome, want := range map[string]float64{outcomeSuccess: 0, outcomeRetriable: 2, outcomeNonRetriable: 0} {
				if n := counter(t, reg, "dovewarden_broker_deliveries_total", map[string]string{"trigger": "t", "outcome": outcome}); n != want {
					t.Errorf("%v deliveries %s; want %v", n, outcome, want)
				}
			}
			if n := counter(t, reg, "dovewarden_broker_replies_total", nil); n != 0 {
				t.Errorf("%v replies published", n)
			}
			if name == "handler" && sub.count() != 2 {
				t.Errorf("handler called %d times; want 2 (retry: 1)", sub.count())
			}
		})
	}
}

// TestHandlerReply_LargerThanMaxBodyIsNotPublished: an in-process
// subscriber's reply is bounded as an HTTP subscriber's is (its data is
// the body sdk-go's receiver would answer with): one larger than MaxBody
// is not published; the original event goes to the dead-letter sink once,
// with knativeerrorcode 413, and the subscriber is not asked again.
func TestHandlerReply_LargerThanMaxBodyIsNotPublished(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "svc", "  delivery:\n    retry: 2\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"),
		typeTrigger("results", typeSucceeded, "results", ""))
	sub, dls, results := newRecorder(), newRecorder(), newRecorder()
	sub.answer = func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		r := event("r1", typeSucceeded, "")
		if err := r.SetData("text/plain", []byte(strings.Repeat("x", 2000))); err != nil {
			t.Error(err)
		}
		return &r, nil
	}
	b, reg := start(t, cfg, Options{MaxBody: 1024, Handlers: map[string]Handler{"svc": sub.handle, "dls": dls.handle, "results": results.handle}})
	if err := b.Publish(context.Background(), event("e1", typeChanged, "")); err != nil {
		t.Fatal(err)
	}
	// Published, the reply reaches results; refused, the event reaches
	// the sink instead. Whichever comes first tells.
	select {
	case r := <-results.ch:
		t.Fatalf("reply %s of %d bytes published; want it refused as larger than MaxBody 1024", r.ID(), len(r.Data()))
	case ev := <-dls.ch:
		ext := ev.Extensions()
		if ev.ID() != "e1" || ext[ExtErrorCode] != "413" || ext[ExtErrorDest] != "inprocess://broker/b" {
			t.Errorf("dead-letter sink got %s with code %v, dest %v; want e1, 413, inprocess://broker/b", ev.ID(), ext[ExtErrorCode], ext[ExtErrorDest])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("neither the reply nor the dead letter within 5s")
	}
	if n := sub.count(); n != 1 {
		t.Errorf("subscriber got the event %d times, want 1", n)
	}
	if n := results.count(); n != 0 {
		t.Errorf("results got %d replies, want none", n)
	}
	if got := counter(t, reg, "dovewarden_broker_deliveries_total", map[string]string{"trigger": "t", "outcome": "success"}); got != 1 {
		t.Errorf("deliveries_total{success} = %v, want 1", got)
	}
}
