package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPassThroughHeaders: Knative's selection (utils.PassThroughHeaders:
// X-Request-Id, Retry-After, Knative-* and X-B3-*, in any case), bounded.
func TestPassThroughHeaders(t *testing.T) {
	in := http.Header{
		"X-Request-Id":      {"r1"},
		"Retry-After":       {"3"},
		"Knative-Foo":       {"a", "b"},
		"X-B3-Traceid":      {"463ac35c9f6413ad"},
		"knative-lower":     {"kept as it is keyed"},
		"Traceparent":       {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"Kn-Namespace":      {"other"},
		"Authorization":     {"Bearer secret"},
		"Ce-Id":             {"e1"},
		"Content-Type":      {"application/json"},
		"Prefer":            {"reply"},
		"X-B3":              {"no dash, no prefix"},
		"Knative-Bad-Value": {"a\nb"},
		"Knative-Bad Name":  {"x"},
	}
	got := PassThroughHeaders(in)
	want := []string{"Knative-Foo", "Retry-After", "X-B3-Traceid", "X-Request-Id", "knative-lower"}
	if len(got) != len(want) {
		t.Errorf("kept %v, want the names %v", got, want)
	}
	for _, name := range want {
		if strings.Join(got[name], ",") != strings.Join(in[name], ",") {
			t.Errorf("%s: %q, want %q", name, got[name], in[name])
		}
	}
	if PassThroughHeaders(http.Header{"Authorization": {"x"}}) != nil {
		t.Error("nothing to keep: want nil")
	}

	// Bounded: whole headers, by name in order, as long as they fit.
	many := http.Header{}
	for i := range MaxPassThroughValues + 5 {
		many[http.CanonicalHeaderKey("Knative-H"+strconv.Itoa(100+i))] = []string{"v"}
	}
	if got := PassThroughHeaders(many); len(got) != MaxPassThroughValues || got["Knative-H100"] == nil || got["Knative-H"+strconv.Itoa(100+MaxPassThroughValues)] != nil {
		t.Errorf("%d headers kept of %d, want the first %d", len(got), len(many), MaxPassThroughValues)
	}
	big := http.Header{
		"Knative-A": {strings.Repeat("a", MaxPassThroughBytes)},
		"Knative-B": {"small"},
	}
	if got := PassThroughHeaders(big); len(got) != 1 || got.Get("Knative-B") != "small" {
		t.Errorf("kept %d headers, want only Knative-B (Knative-A is larger than the bound)", len(got))
	}
}

// passHeaders are pass-through headers (and others) of a request to the
// ingress.
var passHeaders = map[string]string{
	"Knative-Orig": "from the sender", "X-Request-Id": "req-1", "X-B3-Traceid": "463ac35c9f6413ad",
	"Authorization": "Bearer secret", "Traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	"Kn-Namespace": "forged",
}

func withAll(base, more map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range more {
		out[k] = v
	}
	return out
}

// checkPassed fails unless h holds the pass-through headers of
// passHeaders, Kn-Namespace ns, and none of the others.
func checkPassed(t *testing.T, who string, h http.Header, ns string) {
	t.Helper()
	for _, k := range []string{"Knative-Orig", "X-Request-Id", "X-B3-Traceid"} {
		if h.Get(k) != passHeaders[k] {
			t.Errorf("%s: %s %q, want %q", who, k, h.Get(k), passHeaders[k])
		}
	}
	for _, k := range []string{"Authorization", "Traceparent"} {
		if h.Get(k) != "" {
			t.Errorf("%s: got %s, which does not pass through", who, k)
		}
	}
	if got := h.Values(HeaderNamespace); len(got) != 1 || got[0] != ns {
		t.Errorf("%s: Kn-Namespace %q, want %q", who, got, ns)
	}
}

// TestIngress_PassThroughHeadersReachTheSubscriber: as Knative's ingress
// and filter do, the request's pass-through headers go with the event to
// the subscriber, with Kn-Namespace (the namespace of the path; the
// broker's at "/" and for events published in-process, which have no
// headers), and Prefer: reply.
func TestIngress_PassThroughHeadersReachTheSubscriber(t *testing.T) {
	sub, url := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "svc", ""))
	b, _ := start(t, cfg, Options{Namespace: "mail", Subscribers: map[string]string{"svc": url}})
	request := func(path string) http.Header {
		t.Helper()
		if rr := post(t, b.Ingress(), "POST", path, withAll(binaryHeaders, passHeaders), "{}"); rr.Code != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s", path, rr.Code, rr.Body)
		}
		<-sub.got
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return sub.reqs[len(sub.reqs)-1].Header
	}
	h := request("/team-a/b")
	checkPassed(t, "/team-a/b", h, "team-a")
	if h.Get("Prefer") != "reply" || h.Get("Ce-Id") != "e1" {
		t.Errorf("Prefer %q, Ce-Id %q", h.Get("Prefer"), h.Get("Ce-Id"))
	}
	checkPassed(t, "/", request("/"), "mail")

	if err := b.Publish(context.Background(), event("e3", typeChanged, "")); err != nil {
		t.Fatal(err)
	}
	<-sub.got
	sub.mu.Lock()
	h = sub.reqs[len(sub.reqs)-1].Header
	sub.mu.Unlock()
	if h.Get("Knative-Orig") != "" || h.Get("X-Request-Id") != "" || h.Get(HeaderNamespace) != "mail" {
		t.Errorf("published in-process: headers %v; want only Kn-Namespace mail", h)
	}

	if _, err := New(cfg, Options{Namespace: "Not_A_Namespace", Registerer: prometheus.NewRegistry()}); err == nil {
		t.Error("a namespace Kubernetes cannot have was accepted")
	}
}

// TestHTTPDeadLetterSink_GetsThePassThroughHeaders: Knative's channel
// dispatcher sends the dead-letter sink the headers it sent the
// subscriber (the pass-through ones and Kn-Namespace), without Prefer.
func TestHTTPDeadLetterSink_GetsThePassThroughHeaders(t *testing.T) {
	sub, subURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadRequest) })
	dls, dlsURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "svc", "  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
	b, _ := start(t, cfg, Options{Subscribers: map[string]string{"svc": subURL, "dls": dlsURL}})
	if rr := post(t, b.Ingress(), "POST", "/team-a/b", withAll(binaryHeaders, passHeaders), "{}"); rr.Code != http.StatusAccepted {
		t.Fatalf("%d %s", rr.Code, rr.Body)
	}
	<-sub.got
	<-dls.got
	dls.mu.Lock()
	h := dls.reqs[0].Header
	dls.mu.Unlock()
	checkPassed(t, "dead-letter sink", h, "team-a")
	if h.Get("Prefer") != "" || h.Get("Ce-Knativeerrorcode") != "400" {
		t.Errorf("dead-letter sink: Prefer %q, Ce-Knativeerrorcode %q", h.Get("Prefer"), h.Get("Ce-Knativeerrorcode"))
	}
}

// replyingSubscriber answers each event with a reply of type typ whose
// response carries the pass-through header Knative-Reply (and one that
// does not pass through).
func replyingSubscriber(typ string) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Ce-Specversion", "1.0")
		w.Header().Set("Ce-Id", "reply-"+r.Header.Get("Ce-Id"))
		w.Header().Set("Ce-Source", "sync")
		w.Header().Set("Ce-Type", typ)
		w.Header().Set("Knative-Reply", "from the subscriber")
		w.Header().Set("X-Not-Passed", "x")
		w.WriteHeader(http.StatusOK)
	}
}

// TestHTTPReply_KeepsTheResponsesHeaders: a reply goes back into the
// broker with the pass-through headers of the subscriber's response, not
// those of the event it answers (Knative's filter writes the response's
// onto its own, the channel dispatcher sends them with the reply to the
// ingress, which keeps them); its namespace is the Trigger's.
func TestHTTPReply_KeepsTheResponsesHeaders(t *testing.T) {
	_, replierURL := newHTTPSubscriber(t, replyingSubscriber(typeSucceeded))
	results, resultsURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	cfg := mustLoad(t, typeTrigger("ask", typeChanged, "replier", ""), typeTrigger("results", typeSucceeded, "results", ""))
	b, _ := start(t, cfg, Options{Subscribers: map[string]string{"replier": replierURL, "results": resultsURL}})
	if rr := post(t, b.Ingress(), "POST", "/team-a/b", withAll(binaryHeaders, passHeaders), "{}"); rr.Code != http.StatusAccepted {
		t.Fatalf("%d %s", rr.Code, rr.Body)
	}
	<-results.got
	results.mu.Lock()
	h := results.reqs[0].Header
	results.mu.Unlock()
	if h.Get("Ce-Id") != "reply-e1" || h.Get("Knative-Reply") != "from the subscriber" || h.Get("X-Not-Passed") != "" ||
		h.Get("Knative-Orig") != "" || h.Get("X-Request-Id") != "" || h.Get(HeaderNamespace) != "team-a" {
		t.Errorf("the reply's subscriber got %v; want Knative-Reply and Kn-Namespace team-a only", h)
	}
}

// TestHTTPReply_NotPublishedGoesToTheSinkWithTheResponsesHeaders: when
// the reply cannot go into the broker, the original event goes to the
// dead-letter sink with the headers the reply had (Knative's dispatcher
// sends the sink responseAdditionalHeaders then).
func TestHTTPReply_NotPublishedGoesToTheSinkWithTheResponsesHeaders(t *testing.T) {
	_, replierURL := newHTTPSubscriber(t, replyingSubscriber(typeSucceeded))
	dls, dlsURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	cfg := mustLoad(t, typeTrigger("ask", typeChanged, "replier", "  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
	b, _ := start(t, cfg, Options{Subscribers: map[string]string{"replier": replierURL, "dls": dlsURL}})
	// TTL 2 becomes 1: the reply would be the event's last pass, and is refused.
	if rr := post(t, b.Ingress(), "POST", "/team-a/b", withAll(with(binaryHeaders, "Ce-Knativebrokerttl", "2"), passHeaders), "{}"); rr.Code != http.StatusAccepted {
		t.Fatalf("%d %s", rr.Code, rr.Body)
	}
	<-dls.got
	dls.mu.Lock()
	h := dls.reqs[0].Header
	dls.mu.Unlock()
	if h.Get("Ce-Id") != "e1" || h.Get("Ce-Knativeerrorcode") != "400" || h.Get("Knative-Reply") != "from the subscriber" ||
		h.Get("Knative-Orig") != "" || h.Get(HeaderNamespace) != "team-a" {
		t.Errorf("dead-letter sink got %v; want e1 with the reply's Knative-Reply and Kn-Namespace team-a", h)
	}
}

// TestSpool_KeepsTheHeadersAndNamespace: an event held at a stop keeps its
// pass-through headers and namespace through the spool file, so the
// subscriber gets after the next start what it would have got before;
// a header in the file that does not pass through is not sent.
func TestSpool_KeepsTheHeadersAndNamespace(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "svc", ""))
	// A subscriber that never answers: the stop cuts the delivery short.
	stuck, stuckURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	b, err := New(cfg, Options{Subscribers: map[string]string{"svc": stuckURL}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if rr := post(t, b.Ingress(), "POST", "/team-a/b", withAll(binaryHeaders, passHeaders), "{}"); rr.Code != http.StatusAccepted {
		t.Fatalf("%d %s", rr.Code, rr.Body)
	}
	eventually(t, "the delivery is in flight", func() bool {
		stuck.mu.Lock()
		defer stuck.mu.Unlock()
		return len(stuck.reqs) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	held, _ := b.Shutdown(ctx)
	if len(held) != 1 || held[0].Namespace != "team-a" || held[0].Header.Get("Knative-Orig") != passHeaders["Knative-Orig"] {
		t.Fatalf("held %+v", held)
	}

	var buf bytes.Buffer
	if err := EncodeSpool(&buf, held, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"namespace":"team-a"`) || !strings.Contains(buf.String(), `"Knative-Orig":["from the sender"]`) {
		t.Errorf("spool line %s", buf.String())
	}
	// An edited file: a header that does not pass through is left out.
	line := strings.Replace(buf.String(), `"headers":{`, `"headers":{"Authorization":["Bearer x"],`, 1)
	path := filepath.Join(t.TempDir(), "spool")
	writeFile(t, path, line)

	sub, url := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	b2, _ := start(t, cfg, Options{Subscribers: map[string]string{"svc": url}})
	if n, err := b2.RestoreSpool(path); err != nil || n != 1 {
		t.Fatalf("RestoreSpool: %d, %v", n, err)
	}
	<-sub.got
	sub.mu.Lock()
	h := sub.reqs[0].Header
	sub.mu.Unlock()
	checkPassed(t, "after the restart", h, "team-a")

	// A file from before headers were kept: no headers, the broker's namespace.
	old := `{"trigger":"t","phase":"deliver","ttl":254,"event":{"specversion":"1.0","id":"e9","source":"s","type":"` + typeChanged + `"}}` + "\n"
	writeFile(t, path, old)
	if n, err := b2.RestoreSpool(path); err != nil || n != 1 {
		t.Fatalf("RestoreSpool: %d, %v", n, err)
	}
	<-sub.got
	sub.mu.Lock()
	h = sub.reqs[1].Header
	sub.mu.Unlock()
	if h.Get(HeaderNamespace) != DefaultNamespace || h.Get("Knative-Orig") != "" {
		t.Errorf("an older line: headers %v", h)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestHTTPReply_LargerThanMaxBodyIsNotRetried: a subscriber's 2xx reply
// larger than the broker takes fails as a reply the ingress refuses
// (413), which is not retried: the subscriber is not sent the event again
// only to make the same reply, and the original event goes to the
// dead-letter sink once, with the reply's headers. A body that large that
// is no CloudEvent is still Knative's 502, retried, and so is a batch of
// any size.
func TestHTTPReply_LargerThanMaxBodyIsNotRetried(t *testing.T) {
	big := strings.Repeat("x", 2000)
	batch := func(data string) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/cloudevents-batch+json")
			fmt.Fprintf(w, `[{"specversion":"1.0","id":"r1","source":"sync","type":%q,"data":%q}]`, typeSucceeded, data)
		}
	}
	for name, tc := range map[string]struct {
		answer         func(w http.ResponseWriter, r *http.Request)
		attempts       int
		code, dest     string
		replyHeaderDLS bool
	}{
		"CloudEvent": {func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Knative-Reply", "from the subscriber")
			w.Header().Set("Ce-Specversion", "1.0")
			w.Header().Set("Ce-Id", "reply-1")
			w.Header().Set("Ce-Source", "sync")
			w.Header().Set("Ce-Type", typeSucceeded)
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, big)
		}, 1, "413", "inprocess://broker/b", true},
		"not a CloudEvent": {func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, big)
		}, 3, "502", "", false},
		// A batch is no reply at any size: Knative's filter cannot read
		// one event from it, and answers 502.
		"a small batch": {batch("x"), 3, "502", "", false},
		"a large batch": {batch(big), 3, "502", "", false},
	} {
		t.Run(name, func(t *testing.T) {
			sub, url := newHTTPSubscriber(t, tc.answer)
			dls, dlsURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
			cfg := mustLoad(t, typeTrigger("t", typeChanged, "svc", "  delivery:\n    retry: 2\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"),
				typeTrigger("results", typeSucceeded, "results", ""))
			results := newRecorder()
			b, _ := start(t, cfg, Options{MaxBody: 1024, Subscribers: map[string]string{"svc": url, "dls": dlsURL},
				Handlers: map[string]Handler{"results": results.handle}})
			if err := b.Publish(context.Background(), event("e1", typeChanged, "")); err != nil {
				t.Fatal(err)
			}
			<-dls.got
			dest := tc.dest
			if dest == "" {
				dest = url
			}
			dls.mu.Lock()
			h := dls.reqs[0].Header
			dls.mu.Unlock()
			if h.Get("Ce-Id") != "e1" || h.Get("Ce-Knativeerrorcode") != tc.code || h.Get("Ce-Knativeerrordest") != dest {
				t.Errorf("dead-letter sink got %s with code %q, dest %q; want e1, %s, %s",
					h.Get("Ce-Id"), h.Get("Ce-Knativeerrorcode"), h.Get("Ce-Knativeerrordest"), tc.code, dest)
			}
			if got := h.Get("Knative-Reply") != ""; got != tc.replyHeaderDLS {
				t.Errorf("dead-letter sink got the reply's Knative-Reply: %v, want %v", got, tc.replyHeaderDLS)
			}
			results.quiet(t)
			sub.mu.Lock()
			n := len(sub.reqs)
			sub.mu.Unlock()
			if n != tc.attempts {
				t.Errorf("subscriber sent the event %d times, want %d", n, tc.attempts)
			}
		})
	}
}
