package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

func post(t *testing.T, h http.Handler, method, path string, header map[string]string, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req)
	return rr
}

var binaryHeaders = map[string]string{
	"Ce-Specversion": "1.0", "Ce-Id": "e1", "Ce-Source": "mail-a.test", "Ce-Type": typeChanged,
	"Ce-Subject": "u1", "Ce-Priority": "high", "Content-Type": "application/json",
}

const structured = `{"specversion":"1.0","id":"e2","source":"mail-a.test","type":"` + typeChanged +
	`","subject":"u1","priority":"high","datacontenttype":"application/json","data":{"user":"u1"}}`

func TestIngress(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "sub", ""))
	rec := newRecorder()
	b, reg := start(t, cfg, Options{MaxBody: 1024, Handlers: map[string]Handler{"sub": rec.handle}})
	h := b.Ingress()

	t.Run("binary at /", func(t *testing.T) {
		rr := post(t, h, "POST", "/", binaryHeaders, `{"user":"u1"}`)
		if rr.Code != http.StatusAccepted {
			t.Fatalf("%d %s", rr.Code, rr.Body)
		}
		got := rec.next(t)
		if got.ID() != "e1" || got.Extensions()["priority"] != "high" || string(got.Data()) != `{"user":"u1"}` {
			t.Errorf("delivered %v", got)
		}
	})
	t.Run("structured at the broker-ingress path", func(t *testing.T) {
		rr := post(t, h, "POST", "/default/b", map[string]string{"Content-Type": "application/cloudevents+json"}, structured)
		if rr.Code != http.StatusAccepted {
			t.Fatalf("%d %s", rr.Code, rr.Body)
		}
		if got := rec.next(t); got.ID() != "e2" || got.Extensions()["priority"] != "high" {
			t.Errorf("delivered %v", got)
		}
	})
	for name, tc := range map[string]struct {
		method, path string
		header       map[string]string
		body         string
		code         int
		reason       string
		counted      string // the refused counter's reason; "" for none
	}{
		"not a CloudEvent": {"POST", "/", map[string]string{"Content-Type": "application/json"}, `{"event":"x"}`, 400, "not a CloudEvent", "not_cloudevent"},
		"no id":            {"POST", "/", without(binaryHeaders, "Ce-Id"), `{}`, 400, "id", "invalid_event"},
		"bad JSON":         {"POST", "/", map[string]string{"Content-Type": "application/cloudevents+json"}, `{"specversion":`, 400, "not a CloudEvent", "not_cloudevent"},
		"too large":        {"POST", "/", binaryHeaders, strings.Repeat("x", 2000), 413, "larger than 1024", "too_large"},
		// Sent on as JSON or saved in the spool file, it would come back
		// as the event's data.
		"extension data":  {"POST", "/", with(binaryHeaders, "Ce-Data", "x"), "{}", 400, `extension name "data"`, "invalid_event"},
		"GET":             {"GET", "/", nil, "", 405, "POST", "method"},
		"PUT":             {"PUT", "/default/b", binaryHeaders, "{}", 405, "POST", "method"},
		"other broker":    {"POST", "/default/other", binaryHeaders, "{}", 404, "no broker", "no_broker"},
		"deep path":       {"POST", "/a/b/c", binaryHeaders, "{}", 404, "no broker", "no_broker"},
		"not a namespace": {"POST", "/Not_A.Namespace/b", binaryHeaders, "{}", 404, "no broker", "no_broker"},
		"TTL exhausted":   {"POST", "/", with(binaryHeaders, "Ce-Knativebrokerttl", "1"), "{}", 400, "TTL", "ttl_exhausted"},
		"OPTIONS":         {"OPTIONS", "/", nil, "", 200, "", ""},
	} {
		t.Run(name, func(t *testing.T) {
			all, one := refused(t, reg, ""), refused(t, reg, tc.counted)
			rr := post(t, h, tc.method, tc.path, tc.header, tc.body)
			if rr.Code != tc.code || !strings.Contains(rr.Body.String(), tc.reason) {
				t.Errorf("%d %q; want %d with %q", rr.Code, rr.Body, tc.code, tc.reason)
			}
			switch {
			case tc.counted == "" && refused(t, reg, "") != all:
				t.Errorf("refused counted %v more times", refused(t, reg, "")-all)
			case tc.counted != "" && (refused(t, reg, tc.counted) != one+1 || refused(t, reg, "") != all+1):
				t.Errorf("refused{reason=%q} went from %v to %v, all reasons from %v to %v; want one more of each",
					tc.counted, one, refused(t, reg, tc.counted), all, refused(t, reg, ""))
			}
		})
	}
	rec.quiet(t)
}

// TestIngress_BadExtensionNameIs400: sdk-go reads an extension header
// whose name the CloudEvents spec forbids as an error or as an extension,
// depending on the order of the headers; the ingress refuses it either way.
func TestIngress_BadExtensionNameIs400(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "sub", ""))
	rec := newRecorder()
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	h := b.Ingress()
	header := with(with(binaryHeaders, "Ce-Specversion", "0.3"), "Ce-!", "1")
	for range 20 {
		if rr := post(t, h, "POST", "/", header, "{}"); rr.Code != http.StatusBadRequest {
			t.Fatalf("%d %q; want 400", rr.Code, rr.Body)
		}
	}
	rec.quiet(t)
	if got := refused(t, reg, ""); got != 20 {
		t.Errorf("refused counted %v times; want 20", got)
	}
}

// TestIngress_AttributeNoHeaderCanCarryIs400: Knative's ingress forwards
// every event in binary mode, where a control character in an attribute
// cannot travel (it answers 500 and routes nothing); here such an event is
// refused up front with a 400 naming the attribute, by Publish too, and
// such a reply goes to the dead-letter sink as an invalid reply does.
func TestIngress_AttributeNoHeaderCanCarryIs400(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "sub", ""),
		typeTrigger("ask", "ask", "replier", "  delivery:\n    retry: 3\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
	rec, replier, dls := newRecorder(), newRecorder(), newRecorder()
	replier.answer = func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		r := event("r1", typeChanged, "")
		r.SetSubject("u1\nu2")
		return &r, nil
	}
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle, "replier": replier.handle, "dls": dls.handle}})
	ce := map[string]string{"Content-Type": "application/cloudevents+json"}
	for name, tc := range map[string]struct {
		from, to string // replaced in the structured event
		attr     string // named in the answer; "" for a 202
	}{
		"subject with LF":        {`"subject":"u1"`, `"subject":"u1\nX-Injected: yes"`, "subject"},
		"subject with CR":        {`"subject":"u1"`, `"subject":"u1\r"`, "subject"},
		"id with NUL":            {`"id":"e2"`, `"id":"e\u0000"`, "id"},
		"extension with DEL":     {`"priority":"high"`, `"priority":"hi\u007fgh"`, "priority"},
		"datacontenttype":        {`"datacontenttype":"application/json","data":{"user":"u1"}`, `"datacontenttype":"text/plain\r","data":"u1"`, "datacontenttype"},
		"subject with a tab":     {`"subject":"u1"`, `"subject":"u1\tu2"`, ""},
		"subject with non-ASCII": {`"subject":"u1"`, `"subject":"üser"`, ""},
	} {
		t.Run(name, func(t *testing.T) {
			before := refused(t, reg, "invalid_event")
			rr := post(t, b.Ingress(), "POST", "/", ce, strings.Replace(structured, tc.from, tc.to, 1))
			if tc.attr == "" {
				if rr.Code != http.StatusAccepted {
					t.Fatalf("%d %s; want 202", rr.Code, rr.Body)
				}
				rec.next(t)
				return
			}
			if rr.Code != http.StatusBadRequest || !strings.Contains(rr.Body.String(), "attribute "+tc.attr) {
				t.Errorf("%d %q; want 400 naming attribute %s", rr.Code, rr.Body, tc.attr)
			}
			if got := refused(t, reg, "invalid_event"); got != before+1 {
				t.Errorf("refused{reason=invalid_event} went from %v to %v", before, got)
			}
		})
	}
	ev := event("e3", typeChanged, "")
	ev.SetSubject("u1\nu2")
	if err := b.Publish(context.Background(), ev); !errors.Is(err, ErrInvalidEvent) || !strings.Contains(err.Error(), "subject") {
		t.Errorf("Publish: %v; want ErrInvalidEvent naming subject", err)
	}
	if err := b.Publish(context.Background(), event("q1", "ask", "")); err != nil {
		t.Fatal(err)
	}
	dead := dls.next(t)
	if ext := dead.Extensions(); dead.ID() != "q1" || ext[ExtErrorCode] != "400" || ext[ExtErrorDest] != b.ingressDest() {
		t.Errorf("dead-letter sink got %s with %v", dead.ID(), ext)
	}
	if replier.count() != 1 {
		t.Errorf("%d deliveries to the replier; a reply that can never be forwarded is not retried", replier.count())
	}
	rec.quiet(t)
}

// TestIngress_PaddedAttributesAreTrimmed: on a cluster every attribute
// reaches the Triggers' filters and the subscribers as an HTTP header,
// which loses the spaces and tabs at its ends (and only those), so an
// event sent in structured mode with them is routed and delivered as if
// it had none. An id of blanks is no id: 400.
func TestIngress_PaddedAttributesAreTrimmed(t *testing.T) {
	cfg := mustLoad(t, trigger("t", "  filters:\n  - exact:\n      subject: u1\n      priority: high\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: sub\n"))
	rec := newRecorder()
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	ce := map[string]string{"Content-Type": "application/cloudevents+json"}
	padded := `{"specversion":"1.0","id":" e2\t","source":"mail-a.test","type":"\t` + typeChanged +
		` ","subject":" u1\t","priority":"high ","region":"\u00a0eu ","datacontenttype":"text/plain\t","data":"u1"}`
	if rr := post(t, b.Ingress(), "POST", "/", ce, padded); rr.Code != http.StatusAccepted {
		t.Fatalf("%d %s; want 202", rr.Code, rr.Body)
	}
	got := rec.next(t)
	ext := got.Extensions()
	if got.ID() != "e2" || got.Type() != typeChanged || got.Subject() != "u1" || got.DataContentType() != "text/plain" ||
		ext["priority"] != "high" || ext["region"] != "\u00a0eu" {
		t.Errorf("delivered id %q type %q subject %q datacontenttype %q extensions %q", got.ID(), got.Type(), got.Subject(), got.DataContentType(), ext)
	}

	ev := event("e3", typeChanged, "high\t")
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if got := rec.next(t); got.Extensions()["priority"] != "high" {
		t.Errorf("published in-process: priority %q", got.Extensions()["priority"])
	}
	if ev.Extensions()["priority"] != "high\t" {
		t.Error("Publish changed the caller's event")
	}

	before := refused(t, reg, "invalid_event")
	rr := post(t, b.Ingress(), "POST", "/", ce, strings.Replace(padded, `" e2\t"`, `" \t "`, 1))
	if rr.Code != http.StatusBadRequest || !strings.Contains(rr.Body.String(), "id: ") {
		t.Errorf("id of blanks: %d %q; want 400 naming id", rr.Code, rr.Body)
	}
	if got := refused(t, reg, "invalid_event"); got != before+1 {
		t.Errorf("refused{reason=invalid_event} went from %v to %v", before, got)
	}
	rec.quiet(t)
}

// refusedReasons are the label values of the ingress's refused counter.
var refusedReasons = []string{"not_cloudevent", "invalid_event", "ttl_exhausted", "too_large", "no_broker", "method"}

// refused is the ingress's refused counter for reason, or for all reasons
// when reason is empty.
func refused(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	const name = "dovewarden_broker_ingress_refused_total"
	if reason != "" {
		return counter(t, reg, name, map[string]string{"reason": reason})
	}
	var n float64
	for _, r := range refusedReasons {
		n += counter(t, reg, name, map[string]string{"reason": r})
	}
	return n
}

func without(h map[string]string, key string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if k != key {
			out[k] = v
		}
	}
	return out
}

func with(h map[string]string, key, value string) map[string]string {
	out := without(h, key)
	out[key] = value
	return out
}

func TestIngress_QueueFullIs503(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", typeChanged, "sub", ""))
	cfg.Triggers[0].QueueSize, cfg.Triggers[0].Workers = 1, 1
	slow := newBlocker()
	defer close(slow.release)
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": slow.handle}})
	h := b.Ingress()
	codes := map[int]int{}
	for range 5 {
		rr := post(t, h, "POST", "/", binaryHeaders, "{}")
		codes[rr.Code]++
		if rr.Code == http.StatusServiceUnavailable && rr.Header().Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
	}
	if codes[202] != 2 || codes[503] != 3 {
		t.Errorf("answers %v; want 2×202 (one in the worker, one queued) and 3×503", codes)
	}
	if got := counter(t, reg, "dovewarden_broker_events_rejected_total", map[string]string{"trigger": "t"}); got != 3 {
		t.Errorf("rejected %v", got)
	}
}

// httpSubscriber records requests and answers with answer.
type httpSubscriber struct {
	mu     sync.Mutex
	reqs   []*http.Request
	bodies []string
	answer func(w http.ResponseWriter, r *http.Request)
	got    chan struct{}
}

func newHTTPSubscriber(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) (*httpSubscriber, string) {
	s := &httpSubscriber{answer: answer, got: make(chan struct{}, 100)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, r)
		s.bodies = append(s.bodies, string(body))
		s.mu.Unlock()
		s.answer(w, r)
		s.got <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	return s, srv.URL
}

func TestHTTPSubscriber_BinaryModeAndReply(t *testing.T) {
	sub, url := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Ce-Specversion", "1.0")
		w.Header().Set("Ce-Id", "reply-1")
		w.Header().Set("Ce-Source", "sync")
		w.Header().Set("Ce-Type", typeSucceeded)
		w.Header().Set("Ce-Subject", r.Header.Get("Ce-Subject"))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"ok":true}`)
	})
	cfg := mustLoad(t,
		trigger("sync", "  filters:\n  - exact:\n      type: "+typeChanged+"\n  subscriber:\n    uri: "+url+"/sync\n"),
		typeTrigger("audit", typeSucceeded, "audit", ""))
	audit := newRecorder()
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"audit": audit.handle}})
	if err := b.Publish(context.Background(), event("e1", typeChanged, "high")); err != nil {
		t.Fatal(err)
	}
	reply := audit.next(t)
	if reply.ID() != "reply-1" || reply.Subject() != "u1" || string(reply.Data()) != `{"ok":true}` {
		t.Errorf("reply %v", reply)
	}
	sub.mu.Lock()
	r := sub.reqs[0]
	sub.mu.Unlock()
	if r.URL.Path != "/sync" || r.Header.Get("Ce-Id") != "e1" || r.Header.Get("Ce-Priority") != "high" ||
		r.Header.Get("Prefer") != "reply" || r.Header.Get("Ce-Knativearrivaltime") == "" || r.Header.Get("Ce-Knativebrokerttl") != "" {
		t.Errorf("request %s %v", r.URL.Path, r.Header)
	}
}

func TestHTTPSubscriber_Failures(t *testing.T) {
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr + "/"
	}()
	for name, tc := range map[string]struct {
		answer   func(w http.ResponseWriter, r *http.Request)
		url      string
		attempts int
		code     string
		data     string
	}{
		"non-CloudEvent body is a 502": {func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }, "", 2, "502", ""},
		"404 is retried":               {func(w http.ResponseWriter, r *http.Request) { http.Error(w, "gone?", 404) }, "", 2, "404", "gone?\n"},
		"400 is not":                   {func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad", 400) }, "", 1, "400", "bad\n"},
		"connection refused":           {nil, refused, 0, "500", "dispatch error: "},
	} {
		t.Run(name, func(t *testing.T) {
			var sub *httpSubscriber
			url := tc.url
			if tc.answer != nil {
				sub, url = newHTTPSubscriber(t, tc.answer)
			}
			cfg := mustLoad(t, trigger("t", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: svc\n  delivery:\n    retry: 1\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
			dls := newRecorder()
			b, _ := start(t, cfg, Options{Subscribers: map[string]string{"svc": url}, Handlers: map[string]Handler{"dls": dls.handle}})
			if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
				t.Fatal(err)
			}
			ext := dls.next(t).Extensions()
			if ext[ExtErrorCode] != tc.code || ext[ExtErrorDest] != url {
				t.Errorf("extensions %#v", ext)
			}
			data, _ := base64.StdEncoding.DecodeString(ext[ExtErrorData].(string))
			if !strings.HasPrefix(string(data), tc.data) {
				t.Errorf("knativeerrordata %q, want %q...", data, tc.data)
			}
			if sub != nil {
				sub.mu.Lock()
				n := len(sub.reqs)
				sub.mu.Unlock()
				if n != tc.attempts {
					t.Errorf("%d attempts, want %d", n, tc.attempts)
				}
			}
		})
	}
}

func TestHTTPSubscriber_StructuredFormatAndMappingWins(t *testing.T) {
	sub, url := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	cfg := mustLoad(t, typeTrigger("t", "x", "svc", "  delivery:\n    format: json\n"))
	inproc := newRecorder()
	b, _ := start(t, cfg, Options{Subscribers: map[string]string{"svc": url}, Handlers: map[string]Handler{"svc": inproc.handle}})
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	<-sub.got
	sub.mu.Lock()
	ct, body := sub.reqs[0].Header.Get("Content-Type"), sub.bodies[0]
	sub.mu.Unlock()
	if !strings.HasPrefix(ct, "application/cloudevents+json") || !strings.Contains(body, `"id":"e1"`) {
		t.Errorf("structured: %s %s", ct, body)
	}
	if inproc.count() != 0 {
		t.Error("the in-process handler was called despite the URL mapping")
	}
	if l := b.Lanes(); len(l) != 1 || l[0].Subscriber != url || !l[0].Enabled {
		t.Errorf("lanes %+v", l)
	}
}

// TestLanes_HideURLPasswords: a subscriber or dead-letter URL's password
// is shown by Lanes (and so in the log and local mode's status) as xxxxx.
func TestLanes_HideURLPasswords(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("t", "x", "svc", "  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
	b, _ := start(t, cfg, Options{Subscribers: map[string]string{
		"svc": "http://hook:s3cret@127.0.0.1:1/hook", "dls": "http://dead:0ther@127.0.0.1:1/dead"}})
	l := b.Lanes()
	if len(l) != 1 || l[0].Subscriber != "http://hook:xxxxx@127.0.0.1:1/hook" || l[0].DeadLetterSink != "http://dead:xxxxx@127.0.0.1:1/dead" {
		t.Errorf("lanes %+v", l)
	}
}

func TestNew_DisablesUnresolvedTriggers(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("enabled", "x", "sub", ""), typeTrigger("disabled", "x", "nobody", "  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: nobody-either\n"))
	rec := newRecorder()
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	lanes := b.Lanes()
	if len(lanes) != 2 || lanes[0].Trigger != "disabled" || lanes[0].Enabled || !lanes[1].Enabled {
		t.Errorf("lanes %+v", lanes)
	}
	if err := b.Publish(context.Background(), event("e1", "x", "")); err != nil {
		t.Fatal(err)
	}
	rec.next(t)
	rec.quiet(t)
	if _, err := New(cfg, Options{Subscribers: map[string]string{"sub": "not a url"}}); err == nil {
		t.Error("a bad subscriber URL was accepted")
	}
}

// TestHTTPDeadLetterSink_BinaryWhateverTheFormat: a Trigger's
// delivery.format json reaches its subscriber only. On a cluster the
// channel dispatcher sends to the dead-letter sink itself, without the
// format (fanout.FanoutEventHandler.makeFanoutRequest), so the sink gets
// binary mode: each attribute a ce- header, the data as the body.
func TestHTTPDeadLetterSink_BinaryWhateverTheFormat(t *testing.T) {
	sub, subURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadRequest) })
	dls, dlsURL := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	cfg := mustLoad(t, typeTrigger("t", "x", "svc", "  delivery:\n    format: json\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
	b, _ := start(t, cfg, Options{Subscribers: map[string]string{"svc": subURL, "dls": dlsURL}})
	ev := event("e1", "x", "")
	if err := ev.SetData("application/json", map[string]string{"user": "u1"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	<-sub.got
	<-dls.got
	sub.mu.Lock()
	subCT := sub.reqs[0].Header.Get("Content-Type")
	sub.mu.Unlock()
	if !strings.HasPrefix(subCT, "application/cloudevents+json") {
		t.Errorf("subscriber: Content-Type %q, want structured mode", subCT)
	}
	dls.mu.Lock()
	h, body := dls.reqs[0].Header, dls.bodies[0]
	dls.mu.Unlock()
	if h.Get("Content-Type") != "application/json" || h.Get("Ce-Id") != "e1" || h.Get("Ce-Knativeerrorcode") != "400" || body != `{"user":"u1"}` {
		t.Errorf("dead-letter sink: headers %v, body %s; want binary mode", h, body)
	}
}
