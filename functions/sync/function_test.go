package function

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

func config(t *testing.T) map[string]string {
	mr := miniredis.RunT(t)
	dove := doveadmtest.NewServer(t, "mail-a", nil)
	return map[string]string{
		"DOVEWARDEN_REDIS_URL":        "redis://" + mr.Addr() + "/0",
		"DOVEWARDEN_DOVEADM_URL":      dove.APIURL(),
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_DESTINATION":      "tcp:mail-b:12345",
		"K_SINK":                      "",
	}
}

var invokeLine = regexp.MustCompile(`(?m)^invoke:\s*(\S+)\s*$`)

// funcGoHandler is what func-go v0.22.0 serves at every path but
// /health/* for f, by func.yaml's invoke as the func CLI's scaffolding
// starts it: for http the function's Handle(w, r) (http/service.go), for
// cloudevent sdk-go's receive handler around Handle(ctx, event)
// (cloudevents/service.go). A Handle of the other shape fails there.
func funcGoHandler(t *testing.T, f *Function) http.Handler {
	t.Helper()
	raw, err := os.ReadFile("func.yaml")
	if err != nil {
		t.Fatal(err)
	}
	invoke := "http" // func's default
	if m := invokeLine.FindSubmatch(raw); m != nil {
		invoke = string(m[1])
	}
	switch fn := any(f).(type) {
	case interface {
		Handle(http.ResponseWriter, *http.Request)
	}:
		if invoke != "http" {
			t.Fatalf("func.yaml invoke: %s, but Handle takes (w, r): func-go's %s service cannot start the function", invoke, invoke)
		}
		return http.HandlerFunc(fn.Handle)
	case interface {
		Handle(context.Context, event.Event) (*event.Event, error)
	}:
		if invoke != "cloudevent" {
			t.Fatalf("func.yaml invoke: %s, but Handle takes an event", invoke)
		}
		p, err := cloudevents.NewHTTP()
		if err != nil {
			t.Fatal(err)
		}
		h, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, fn.Handle)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	t.Fatal("Function has no Handle func-go serves")
	return nil
}

// serve makes a Function, starts it if start is set, and serves it as
// func-go does; it returns the server's URL and the Function.
func serve(t *testing.T, start bool) (string, *Function) {
	t.Helper()
	f := New()
	if start {
		if err := f.Start(context.Background(), config(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Stop(context.Background()) })
	}
	srv := httptest.NewServer(funcGoHandler(t, f))
	t.Cleanup(srv.Close)
	return srv.URL, f
}

// postEvent posts ev in binary mode, as the Broker delivers it.
func postEvent(t *testing.T, url string, ev cloudevents.Event) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&ev), req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func post(t *testing.T, url, ct, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	return string(body)
}

func change1(t *testing.T) cloudevents.Event {
	t.Helper()
	ev, err := contract.FromChange(change.Change{ID: "c1", User: "u1", Host: "mail-a", Time: time.Now(), Priority: change.High, Event: "mail_delivery_finished"})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestHandle_ChangeRepliesSucceeded: a mailbox.changed delivered as the
// Broker does gets 200 and the replication.succeeded reply, which the
// Broker puts back into itself.
func TestHandle_ChangeRepliesSucceeded(t *testing.T) {
	// Arrange
	url, f := serve(t, true)

	// Act
	resp := postEvent(t, url, change1(t))

	// Assert
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Ce-Type") != contract.TypeReplicationSucceeded || resp.Header.Get("Ce-Subject") != "u1" {
		t.Fatalf("%s, ce-type %q, ce-subject %q; want 200 with %s for u1",
			resp.Status, resp.Header.Get("Ce-Type"), resp.Header.Get("Ce-Subject"), contract.TypeReplicationSucceeded)
	}
	if ok, err := f.Ready(context.Background()); !ok || err != nil {
		t.Errorf("Ready = %v, %v", ok, err)
	}
}

func TestHandle_UnknownTypeIs400(t *testing.T) {
	url, _ := serve(t, true)
	ev := cloudevents.NewEvent()
	ev.SetID("x")
	ev.SetSource("test")
	ev.SetType("com.example.other")
	if resp := postEvent(t, url, ev); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("%s, want 400", resp.Status)
	}
}

// TestHandle_BodyOverMaxBodyIs413: `dovewarden sync` refuses a body over
// --max-body (256 KiB) with 413 without reading it whole (pkg/syncer
// receiver, MaxBytesReader), and counts it; func-go's CloudEvents handler
// would read any size into memory and replicate.
func TestHandle_BodyOverMaxBodyIs413(t *testing.T) {
	url, _ := serve(t, true)
	body := fmt.Sprintf(`{"user":"u1","host":"mail-a","event":"mail_delivery_finished","priority":"high","pad":%q}`, strings.Repeat("x", 1<<20))
	resp := post(t, url, "application/json", body, map[string]string{
		"Ce-Specversion": "1.0", "Ce-Id": "big-1", "Ce-Source": "mail-a",
		"Ce-Type": contract.TypeMailboxChanged, "Ce-Subject": "u1", "Ce-Priority": "high"})
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a %d-byte body: %s (ce-type %q), want 413", len(body), resp.Status, resp.Header.Get("Ce-Type"))
	}
	if m := scrape(t, url); !strings.Contains(m, `dovewarden_sync_events_rejected_total{reason="too_large"} 1`) {
		t.Errorf("the 413 is not counted:\n%s", m)
	}
}

// TestHandle_BadInputIs400: docs/events.md, "How sync answers": a batch or
// an unreadable event is a 400, which the Broker sends to the dead-letter
// sink at once, counted in dovewarden_sync_events_rejected_total. func-go's
// CloudEvents handler answers both 500, which the Broker retries for the
// lane's ~68 minutes.
func TestHandle_BadInputIs400(t *testing.T) {
	url, _ := serve(t, true)
	for _, c := range []struct{ name, ct, body, reason string }{
		{"batch", "application/cloudevents-batch+json",
			`[{"specversion":"1.0","id":"1","source":"s","type":"org.dovewarden.replication.requested","subject":"u1"}]`, "not_cloudevent"},
		{"structured, broken JSON", "application/cloudevents+json", `{"specversion":"1.0",`, "invalid_event"},
	} {
		if resp := post(t, url, c.ct, c.body, nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %s, want 400 (the Broker retries a 5xx, dead-letters a 400)", c.name, resp.Status)
		}
		if m := scrape(t, url); !strings.Contains(m, `dovewarden_sync_events_rejected_total{reason="`+c.reason+`"} 1`) {
			t.Errorf("%s: not counted with reason %s:\n%s", c.name, c.reason, m)
		}
	}
}

// TestHandle_503UntilStarted: func-go's Start runs in the background and
// Ready gates traffic, but a request that comes before Start has finished,
// or after Stop, gets 503, which the Broker retries, not a 2xx that would
// acknowledge an event nothing ran.
func TestHandle_503UntilStarted(t *testing.T) {
	url, f := serve(t, false)
	if ok, _ := f.Ready(context.Background()); ok {
		t.Fatal("ready before Start")
	}
	if resp := postEvent(t, url, change1(t)); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("before Start: %s, want 503", resp.Status)
	}
	if err := f.Start(context.Background(), config(t)); err != nil {
		t.Fatal(err)
	}
	if resp := postEvent(t, url, change1(t)); resp.StatusCode != http.StatusOK {
		t.Errorf("after Start: %s, want 200", resp.Status)
	}
	if err := f.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.Ready(context.Background()); ok {
		t.Error("ready after Stop")
	}
	if resp := postEvent(t, url, change1(t)); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after Stop: %s, want 503", resp.Status)
	}
}

// TestMetrics_ServedAtTheFunctionsPort: func-go's server hands every path
// but /health/* to the function, so GET /metrics is served beside the
// events, on the port func-go listens on, as the ingest function does.
func TestMetrics_ServedAtTheFunctionsPort(t *testing.T) {
	url, _ := serve(t, true)
	if resp := postEvent(t, url, change1(t)); resp.StatusCode != http.StatusOK {
		t.Fatalf("%s, want 200", resp.Status)
	}
	m := scrape(t, url)
	if !strings.Contains(m, `dovewarden_sync_dsyncs_total{outcome="success",priority="high"} 1`) || !strings.Contains(m, "go_goroutines") {
		t.Errorf("GET /metrics:\n%s", m)
	}
}

func TestStart_RefusesRequestsLongerThanFuncGoAllows(t *testing.T) {
	cfg := config(t)
	cfg["DOVEWARDEN_REQUEST_TIMEOUT"] = "2m"
	cfg["DOVEWARDEN_WRITE_TIMEOUT"] = "5m"
	err := New().Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "func-go") {
		t.Fatalf("err = %v", err)
	}
}
