package validate

// The headers and the format the embedded broker sends, held to
// Knative's own code: the header allow-list (utils.PassThroughHeaders)
// and what the channel dispatcher (fanout) sends a dead-letter sink.

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.uber.org/zap"

	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/eventing/pkg/channel/fanout"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/eventing/pkg/utils"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
)

// headerNames are names Knative's allow-list takes or must not take:
// each listed one in several cases, near misses, and common others.
var headerNames = []string{
	"X-Request-Id", "x-request-id", "X-REQUEST-ID", "X-Request-Ids", "X-Request",
	"Retry-After", "retry-after", "Retry-After-Ms",
	"Knative-Foo", "knative-foo-bar", "KNATIVE-X", "Knative-", "Knative", "Knativefoo", "Kn-Namespace", "Kn-Foo",
	"X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "x-b3-flags", "X-B3", "X-B3Traceid", "B3",
	"Traceparent", "Tracestate", "Authorization", "Cookie", "Ce-Id", "Ce-Knativebrokerttl",
	"Content-Type", "Prefer", "Host", "X-Forwarded-For",
}

// TestCrossCheck_PassThroughHeaders: the embedded broker keeps the
// headers Knative's broker keeps, one name at a time and all together
// (within the bounds; beyond them it keeps a part of what Knative keeps).
func TestCrossCheck_PassThroughHeaders(t *testing.T) {
	all := http.Header{}
	for _, name := range headerNames {
		h := http.Header{name: {"v1", "v2"}}
		ours, theirs := broker.PassThroughHeaders(h), utils.PassThroughHeaders(h)
		if !sameHeaders(ours, theirs) {
			t.Errorf("%s: embedded broker keeps %v, Knative %v", name, ours, theirs)
		}
		all[name] = []string{"v-" + name}
	}
	if ours, theirs := broker.PassThroughHeaders(all), utils.PassThroughHeaders(all); !sameHeaders(ours, theirs) {
		t.Errorf("all together: embedded broker keeps %v, Knative %v", ours, theirs)
	}

	big := http.Header{}
	for i := range broker.MaxPassThroughValues * 2 {
		big["Knative-H"+string(rune('a'+i%26))+string(rune('a'+i/26))] = []string{strings.Repeat("x", 200)}
	}
	ours, theirs := broker.PassThroughHeaders(big), utils.PassThroughHeaders(big)
	if len(ours) == 0 || len(ours) >= len(theirs) {
		t.Errorf("beyond the bounds: embedded broker keeps %d headers, Knative %d; want fewer, and some", len(ours), len(theirs))
	}
	for name, v := range ours {
		if !slices.Equal(v, theirs[name]) {
			t.Errorf("beyond the bounds: embedded broker keeps %s %q, Knative %q", name, v, theirs[name])
		}
	}
}

func sameHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// sink records the requests it gets and answers with code.
type sink struct {
	code int
	mu   sync.Mutex
	reqs []*http.Request
	body []string
	got  chan struct{}
}

func newSink(t *testing.T, code int) (*sink, string) {
	s := &sink{code: code, got: make(chan struct{}, 10)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs, s.body = append(s.reqs, r), append(s.body, string(b))
		s.mu.Unlock()
		w.WriteHeader(s.code)
		s.got <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	return s, srv.URL
}

func (s *sink) first(t *testing.T) (http.Header, string) {
	t.Helper()
	select {
	case <-s.got:
	case <-time.After(5 * time.Second):
		t.Fatal("no request within 5s")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[0].Header, s.body[0]
}

// TestCrossCheck_DeadLetterSinkRequest: Knative's channel dispatcher
// (fanout), given a Subscription whose delivery says format json and
// names a dead-letter sink, and the embedded broker, given the Trigger
// that Subscription stands for, send the sink the same request when the
// subscriber answers 400: binary mode, the pass-through headers of the
// request that brought the event in, Kn-Namespace, no Prefer.
func TestCrossCheck_DeadLetterSinkRequest(t *testing.T) {
	sender := http.Header{
		"Knative-Foo": {"bar"}, "X-Request-Id": {"req-1"}, "X-B3-Traceid": {"463ac35c9f6413ad"},
		"Authorization": {"Bearer secret"}, "X-Other": {"x"},
	}
	ev := cloudevents.NewEvent()
	ev.SetID("e1")
	ev.SetSource("mail-a.test")
	ev.SetType("x")
	if err := ev.SetData("application/json", map[string]string{"user": "u1"}); err != nil {
		t.Fatal(err)
	}
	compared := []string{"Content-Type", "Ce-Id", "Ce-Type", "Ce-Knativeerrorcode", "Knative-Foo", "X-Request-Id",
		"X-B3-Traceid", "Kn-Namespace", "Prefer", "Authorization", "X-Other"}

	// Knative: the ingress forwards the event to the channel with the
	// pass-through headers (and Prefer: reply); the channel's fanout
	// delivers it to the Subscription.
	_, subURL := newSink(t, http.StatusBadRequest)
	theirSink, theirSinkURL := newSink(t, http.StatusAccepted)
	format := eventingduckv1.DeliveryFormatJson
	sub, err := fanout.SubscriberSpecToFanoutConfig(eventingduckv1.SubscriberSpec{
		SubscriberURI: mustURL(t, subURL),
		Delivery: &eventingduckv1.DeliverySpec{
			Format:         &format,
			DeadLetterSink: &duckv1.Destination{URI: mustURL(t, theirSinkURL)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sub.Namespace = "team-a" // as the in-memory channel's dispatcher sets it: the channel's
	h, err := fanout.NewFanoutEventHandler(zap.NewNop(), fanout.Config{Subscriptions: []fanout.Subscription{*sub}},
		nil, nil, nil, kncloudevents.NewDispatcher(eventingtls.NewDefaultClientConfig(), nil), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, "http://dovewarden-kne-trigger-kn-channel.team-a.svc.cluster.local/", nil)
	if err := cehttp.WriteRequest(binding.WithForceBinary(context.Background()), binding.ToMessage(&ev), req); err != nil {
		t.Fatal(err)
	}
	for k, v := range utils.PassThroughHeaders(sender) {
		req.Header[k] = v
	}
	req.Header.Set("Prefer", "reply")
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req)
	if rr.Code != http.StatusAccepted {
		t.Fatalf("Knative's channel answered %d", rr.Code)
	}
	theirs, theirBody := theirSink.first(t)

	// The embedded broker.
	_, ourSubURL := newSink(t, http.StatusBadRequest)
	ourSink, ourSinkURL := newSink(t, http.StatusAccepted)
	cfg, err := broker.Load(fstest.MapFS{"t.yaml": {Data: []byte(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: dovewarden
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  broker: dovewarden
  filter:
    attributes:
      type: x
  subscriber:
    uri: ` + ourSubURL + `
  delivery:
    format: json
    deadLetterSink:
      uri: ` + ourSinkURL + `
`)}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(cfg, broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	req = httptest.NewRequest(http.MethodPost, "/team-a/dovewarden", nil)
	if err := cehttp.WriteRequest(binding.WithForceBinary(context.Background()), binding.ToMessage(&ev), req); err != nil {
		t.Fatal(err)
	}
	for k, v := range sender {
		req.Header[k] = v
	}
	rr = httptest.NewRecorder()
	b.Ingress().ServeHTTP(rr, req)
	if rr.Code != http.StatusAccepted {
		t.Fatalf("the embedded broker answered %d: %s", rr.Code, rr.Body)
	}
	ours, ourBody := ourSink.first(t)

	for _, name := range compared {
		if !slices.Equal(ours.Values(name), theirs.Values(name)) {
			t.Errorf("dead-letter sink's %s: embedded broker %q, Knative %q", name, ours.Values(name), theirs.Values(name))
		}
	}
	if ourBody != theirBody {
		t.Errorf("dead-letter sink's body: embedded broker %s, Knative %s", ourBody, theirBody)
	}
}

func mustURL(t *testing.T, s string) *apis.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return (*apis.URL)(u)
}
