package syncer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/replicator"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
)

// broker is a fake Broker ingress collecting what the results sink sends.
type broker struct {
	mu     sync.Mutex
	events []cloudevents.Event
}

func (b *broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ev, err := cloudevents.NewEventFromHTTPRequest(r)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	b.mu.Lock()
	b.events = append(b.events, *ev)
	b.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (b *broker) all() []cloudevents.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]cloudevents.Event(nil), b.events...)
}

type fixture struct {
	h      *Handler
	srv    *httptest.Server
	dove   *doveadmtest.Server
	mr     *miniredis.Miniredis
	st     *state.Store
	broker *broker
	logs   *safebuf.Buffer
	reg    *prometheus.Registry
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dove := doveadmtest.NewServer(t, "mail-a", nil)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	b := &broker{}
	bs := httptest.NewServer(b)
	t.Cleanup(bs.Close)
	snd, err := sink.New(sink.Options{URL: bs.URL, Budget: time.Second, Retries: 1, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	logs := &safebuf.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	reg := prometheus.NewRegistry()
	hosts := doveadm.NewHostMap(doveadm.Endpoint{URL: dove.APIURL(), User: "doveadm", Password: doveadmtest.Password, Destination: "tcp:mail-b:12345"})
	repl := replicator.New(replicator.Options{Owner: "t", LockTTL: time.Second, MaxAttempts: 3, Backoff: time.Millisecond,
		MaxBackoff: 2 * time.Millisecond, RunAgainDelay: time.Millisecond}, st, doveadm.NewHTTP(nil, 5*time.Second), hosts,
		NewSinkNotifier(snd, DefaultSource, reg, log), reg, log)
	h := NewHandler(Options{Budget: 10 * time.Second, MaxBody: 4096}, repl, reg, log)
	reg.MustRegister(sweep.NewUsersCollector(st))
	mux := http.NewServeMux()
	h.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &fixture{h: h, srv: srv, dove: dove, mr: mr, st: st, broker: b, logs: logs, reg: reg}
}

func changeEvent(t *testing.T, user string, at time.Time) cloudevents.Event {
	t.Helper()
	ev, err := contract.FromChange(change.Change{ID: "id-" + user, User: user, Host: "mail-a", Time: at, Priority: change.High,
		Event: "imap_command_finished", Command: "APPEND", Mailbox: "INBOX"})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// postBinary sends ev in binary mode and decodes the reply.
func (f *fixture) postBinary(t *testing.T, ev cloudevents.Event) (*http.Response, *cloudevents.Event, string) {
	t.Helper()
	req, err := cloudevents.NewHTTPRequestFromEvent(context.Background(), f.srv.URL, ev)
	if err != nil {
		t.Fatal(err)
	}
	return f.do(t, req)
}

func (f *fixture) do(t *testing.T, req *http.Request) (*http.Response, *cloudevents.Event, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.Header.Get("Ce-Id") == "" && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/cloudevents") {
		return resp, nil, string(body)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	reply, err := cloudevents.NewEventFromHTTPResponse(resp)
	if err != nil {
		t.Fatalf("reply is not a CloudEvent: %v (%s)", err, body)
	}
	return resp, reply, string(body)
}

func TestHandle_ChangeInBinaryModeRepliesSucceeded(t *testing.T) {
	f := newFixture(t)
	at := time.Now().Add(-3 * time.Second)

	resp, reply, body := f.postBinary(t, changeEvent(t, "u1", at))

	if resp.StatusCode != http.StatusOK || reply == nil {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if reply.Type() != contract.TypeReplicationSucceeded || reply.Subject() != "u1" || reply.Source() != DefaultSource ||
		reply.Extensions()["priority"] != "high" {
		t.Errorf("reply %v", reply)
	}
	var d contract.ReplicationSucceeded
	if err := reply.DataAs(&d); err != nil {
		t.Fatal(err)
	}
	// The user's first dsync: full, as there is no state to start from.
	if d.User != "u1" || d.Host != "mail-a" || d.Destination != "tcp:mail-b:12345" || d.Mode != contract.ModeFull ||
		d.Coalesced != 1 || d.LagMS < 3000 || d.End.Before(d.Start) || d.TriggerID != "id-u1" || d.Attempts != 1 {
		t.Errorf("data %+v", d)
	}
	// The same change again is covered: acknowledged, nothing to reply.
	resp, reply, body = f.postBinary(t, changeEvent(t, "u1", at))
	if resp.StatusCode != http.StatusAccepted || reply != nil || body != "" || resp.Header.Get(HeaderOutcome) == "" {
		t.Errorf("covered change: %d %v %q", resp.StatusCode, reply, body)
	}
	if n := len(f.dove.Tracker.Calls()); n != 1 {
		t.Errorf("%d dsyncs, want 1", n)
	}
}

// TestHandle_RequestedUserIsNormalised: a replication.requested event, which
// any system may send, names its user as ingest names the changes' users
// (the username format): a request for "U1" syncs u1 under u1's lock, and
// one with a name doveadm refuses as sent is refused.
func TestHandle_RequestedUserIsNormalised(t *testing.T) {
	f := newFixture(t)
	uf, err := dovecot.ParseUsernameFormat("%Lu")
	if err != nil {
		t.Fatal(err)
	}
	f.h.opts.Username = uf
	ev, err := contract.Requested(change.Request{User: "U1"}, "alerting", "example/automation")
	if err != nil {
		t.Fatal(err)
	}
	reply, err := f.h.Handle(context.Background(), ev)
	if err != nil || reply == nil || reply.Subject() != "u1" {
		t.Fatalf("Handle = %v, %v; want a reply for u1", reply, err)
	}
	if calls := f.dove.Tracker.CallsOf("u1"); len(calls) != 1 {
		t.Errorf("dsyncs of u1: %+v, want one", calls)
	}
	if calls := f.dove.Tracker.CallsOf("U1"); len(calls) != 0 {
		t.Errorf("dsyncs of U1: %+v, want none", calls)
	}
	bad, err := contract.Requested(change.Request{User: "\xff\xfeU1"}, "alerting", "example/automation")
	if err != nil {
		t.Fatal(err)
	}
	if _, err = f.h.Handle(context.Background(), bad); err == nil {
		t.Error("a user that is not UTF-8 was taken")
	}
}

// A replication.requested naming a host by its address with a colon,
// which ingest and the host map refuse as no CloudEvent source, is still
// replicated, from the default host, as before they refused it: from an
// outside system, or spooled by an older version.
func TestHandle_RequestFromAnAddressUsesTheDefaultHost(t *testing.T) {
	f := newFixture(t)
	ev, err := contract.Requested(change.Request{User: "u3", Host: "10.0.0.1:8080"}, "admin", "example/automation")
	if err != nil {
		t.Fatal(err)
	}
	reply, err := f.h.Handle(context.Background(), ev)
	if err != nil || reply == nil || reply.Type() != contract.TypeReplicationSucceeded {
		t.Fatalf("Handle = %v, %v; want a success", reply, err)
	}
	if calls := f.dove.Tracker.CallsOf("u3"); len(calls) != 1 {
		t.Errorf("dsyncs of u3: %+v, want one", calls)
	}
}

func TestHandle_RequestInStructuredModeAsksFullSync(t *testing.T) {
	f := newFixture(t)
	ev, err := contract.Requested(change.Request{User: "u2", Full: true}, "admin", "dovewarden/cli")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ev)
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/cloudevents+json")

	resp, reply, body := f.do(t, req)

	if resp.StatusCode != 200 || reply == nil || reply.Type() != contract.TypeReplicationSucceeded {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	calls := f.dove.Tracker.CallsOf("u2")
	if len(calls) != 1 || !calls[0].Full {
		t.Errorf("calls %+v, want one full sync", calls)
	}
	var d contract.ReplicationSucceeded
	_ = reply.DataAs(&d)
	if d.Mode != contract.ModeFull {
		t.Errorf("mode %q", d.Mode)
	}
}

func TestHandle_BadInputGets4xxWithReason(t *testing.T) {
	f := newFixture(t)
	sweep := changeEvent(t, "u1", time.Now())
	sweep.SetType(contract.TypeSweepRequested)
	pingEv := changeEvent(t, "u1", time.Now())
	pingEv.SetType(contract.TypePingSource)
	other := changeEvent(t, "u1", time.Now())
	other.SetType("com.example.other")
	// The subject and the data's user, which must agree.
	withUser := func(ev cloudevents.Event, user string) cloudevents.Event {
		var d map[string]any
		if err := json.Unmarshal(ev.Data(), &d); err != nil {
			t.Fatal(err)
		}
		d["user"] = user
		if err := ev.SetData(cloudevents.ApplicationJSON, d); err != nil {
			t.Fatal(err)
		}
		ev.SetSubject(user)
		return ev
	}
	hostile := withUser(changeEvent(t, "u1", time.Now()), "-oProxyCommand=evil")
	wild := withUser(changeEvent(t, "u1", time.Now()), "*")
	lone := changeEvent(t, "u1", time.Now())
	structured := func(ev cloudevents.Event, subject string) *http.Request {
		b, err := ev.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		// A lone surrogate in the JSON: the decoder makes U+FFFD of it.
		body := strings.Replace(string(b), `"subject":"u1"`, `"subject":"`+subject+`"`, 1)
		body = strings.Replace(body, `"user":"u1"`, `"user":"`+subject+`"`, 1)
		if strings.Count(body, subject) != 2 {
			t.Fatalf("no subject in %s", b)
		}
		r, _ := http.NewRequest("POST", f.srv.URL+"/", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/cloudevents+json")
		return r
	}
	badHost := changeEvent(t, "u1", time.Now())
	badHost.SetSource("mail a/../../")
	badData := changeEvent(t, "u1", time.Now())
	_ = badData.SetData("application/json", []byte(`{"user": 42`))
	binaryReq := func(ev cloudevents.Event) *http.Request {
		r, _ := cloudevents.NewHTTPRequestFromEvent(context.Background(), f.srv.URL, ev)
		return r
	}
	raw := func(method, path, ctype, body string, hdr ...string) *http.Request {
		r, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
		if ctype != "" {
			r.Header.Set("Content-Type", ctype)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return r
	}
	tests := []struct {
		name   string
		req    *http.Request
		code   int
		reason string
		metric string
	}{
		{"sweep type", binaryReq(sweep), 400, "is not handled by sync", rejectType},
		{"PingSource type", binaryReq(pingEv), 400, "is not handled by sync without a results sink", rejectType},
		{"other type", binaryReq(other), 400, "want " + contract.TypeMailboxChanged + ", " + contract.TypeReplicationRequested + ", " +
			contract.TypeSweepRequested + " or " + contract.TypePingSource, rejectType},
		{"hostile user", binaryReq(hostile), 400, "starts with '-'", rejectUser},
		{"wildcard user", binaryReq(wild), 400, "wildcard", rejectUser},
		{"lone surrogate user", structured(lone, `u\ud800`), 400, "invalid UTF-8 or a lone surrogate", rejectUser},
		{"bad host", binaryReq(badHost), 400, "only letters", rejectHost},
		{"bad data", binaryReq(badData), 400, "data of event", rejectData},
		{"plain JSON", raw("POST", "/", "application/json", `{"user":"u1"}`), 400, "not a CloudEvent", rejectEncoding},
		{"batch", raw("POST", "/", "application/cloudevents-batch+json", `[]`), 400, "batched", rejectEncoding},
		{"no id", raw("POST", "/", "application/json", `{}`, "Ce-Specversion", "1.0", "Ce-Type", contract.TypeMailboxChanged, "Ce-Source", "mail-a"), 400, "", ""},
		{"broken structured", raw("POST", "/", "application/cloudevents+json", `{"specversion":`), 400, "unreadable CloudEvent", rejectInvalid},
		{"huge", raw("POST", "/", "application/cloudevents+json", `{"data":"`+strings.Repeat("x", 8192)+`"}`), 413, "exceeds", rejectTooLarge},
		{"GET", raw("GET", "/", "", ""), 405, "not allowed", rejectMethod},
		{"path", raw("POST", "/other", "", ""), 404, "post CloudEvents to /", rejectPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := 0.0
			if tt.metric != "" {
				before = testutil.ToFloat64(f.h.m.rejected.WithLabelValues(tt.metric))
			}
			resp, _, body := f.do(t, tt.req)
			if resp.StatusCode != tt.code || !strings.Contains(body, tt.reason) {
				t.Errorf("%d %q, want %d with %q", resp.StatusCode, body, tt.code, tt.reason)
			}
			if tt.metric != "" && testutil.ToFloat64(f.h.m.rejected.WithLabelValues(tt.metric)) != before+1 {
				t.Errorf("rejected{%s} not counted", tt.metric)
			}
		})
	}
	if n := len(f.dove.Tracker.Calls()); n != 0 {
		t.Errorf("%d dsyncs for bad input", n)
	}
	// Still serving.
	if resp, _, _ := f.postBinary(t, changeEvent(t, "u1", time.Now())); resp.StatusCode != 200 {
		t.Errorf("after bad input: %d", resp.StatusCode)
	}
}

func TestHandle_RedisDownIs503AndNothingAcked(t *testing.T) {
	f := newFixture(t)
	f.mr.Close()
	resp, reply, body := f.postBinary(t, changeEvent(t, "u1", time.Now()))
	if resp.StatusCode != http.StatusServiceUnavailable || reply != nil || !strings.Contains(body, "unavailable") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if len(f.dove.Tracker.Calls()) != 0 {
		t.Error("dsync ran without Redis")
	}
	if got := testutil.ToFloat64(f.h.m.decisions.WithLabelValues("unavailable", "high")); got != 1 {
		t.Errorf("decisions{unavailable} = %v", got)
	}
}

// TestHandle_RedisDownIsLoggedAFewTimesAMinute: while Redis is down every
// delivery fails, retries included; each is counted, and 5 a minute are
// logged.
func TestHandle_RedisDownIsLoggedAFewTimesAMinute(t *testing.T) {
	f := newFixture(t)
	f.mr.Close()
	for i := range 12 {
		if resp, _, body := f.postBinary(t, changeEvent(t, fmt.Sprintf("u%d", i), time.Now())); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	if n := strings.Count(f.logs.String(), "replication not acknowledged"); n != 5 {
		t.Errorf("%d lines for 12 unacknowledged replications, want 5:\n%s", n, f.logs.String())
	}
	if got := testutil.ToFloat64(f.h.m.decisions.WithLabelValues("unavailable", "high")); got != 12 {
		t.Errorf("decisions{unavailable} = %v, want 12", got)
	}
}

func TestHandle_EveryFailedAttemptIsSeen(t *testing.T) {
	f := newFixture(t)
	f.dove.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75}, doveadmtest.Reply{Empty: true}, doveadmtest.Reply{ExitCode: 75})

	resp, reply, body := f.postBinary(t, changeEvent(t, "u1", time.Now()))

	// Three attempts, all failed: two retried ones went to the Broker as
	// they happened, the last is the reply.
	if resp.StatusCode != 200 || reply == nil || reply.Type() != contract.TypeReplicationFailed {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	var last contract.ReplicationFailed
	if err := reply.DataAs(&last); err != nil {
		t.Fatal(err)
	}
	if last.Attempt != 3 || last.ExitCode != 75 || !last.Retryable || last.RetryBy != change.RetryBySweep || last.RetryAt != nil {
		t.Errorf("final failure %+v", last)
	}
	sent := f.broker.all()
	if len(sent) != 2 {
		t.Fatalf("broker got %d events, want 2", len(sent))
	}
	for i, ev := range sent {
		var d contract.ReplicationFailed
		if err := ev.DataAs(&d); err != nil || ev.Type() != contract.TypeReplicationFailed || d.Attempt != i+1 ||
			d.RetryBy != change.RetryBySync || d.RetryAt == nil {
			t.Errorf("sent %d: %v %+v", i, ev.Type(), d)
		}
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if !st.Failed || st.PendingSince.IsZero() {
		t.Errorf("status %+v: want failed and pending for the sweep", st)
	}
	if n, err := testutil.GatherAndCount(f.reg, "dovewarden_sync_failing_users"); err != nil || n != 1 {
		t.Errorf("failing users gauge: %d %v", n, err)
	}
}

func TestHandle_PasswordNeverInEventsOrLogs(t *testing.T) {
	f := newFixture(t)
	f.dove.Password = "not-ours" // the configured password is rejected: 401
	resp, reply, body := f.postBinary(t, changeEvent(t, "u1", time.Now()))
	if resp.StatusCode != 200 || reply == nil {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	var d contract.ReplicationFailed
	_ = reply.DataAs(&d)
	if d.Class != "unauthorized" || d.RetryBy != change.RetryNone {
		t.Errorf("%+v", d)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	for where, s := range map[string]string{"reply": string(reply.Data()), "logs": f.logs.String(), "status": st.LastError} {
		if strings.Contains(s, doveadmtest.Password) {
			t.Errorf("%s shows the password", where)
		}
	}
}

// TestMetrics_EveryDecisionStartsAtZero: each decision of each priority
// has its series at 0 from the start, so that DovewardenRedisUnavailable
// sees the first "unavailable" of a process that has been running
// (increase() cannot count a series' first sample).
func TestMetrics_EveryDecisionStartsAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	newHandlerMetrics(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "dovewarden_sync_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var d, p string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "decision":
					d = l.GetValue()
				case "priority":
					p = l.GetValue()
				}
			}
			got[d+"/"+p] = m.GetCounter().GetValue()
		}
	}
	for _, d := range []string{"synced", "covered", "coalesced", "excluded", "failed", "unavailable"} {
		for _, p := range []string{"high", "low"} {
			if v, ok := got[d+"/"+p]; !ok || v != 0 {
				t.Errorf("decision %s, priority %s: %v %v, want a series at 0", d, p, v, ok)
			}
		}
	}
}
