package syncer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
)

// sweepFixture is the handler fixture with a sweeper whose requests go to
// the fixture's fake Broker.
type sweepFixture struct {
	*fixture
	sh  *Handler
	ssv *httptest.Server
}

func newSweepFixture(t *testing.T, users ...string) *sweepFixture {
	t.Helper()
	f := newFixture(t)
	f.dove.SetUsers(users...)
	snd, err := sink.New(sink.Options{URL: brokerURL(t, f), Budget: time.Second, Retries: 1, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o := sweep.Defaults
	o.BatchSize, o.BatchInterval = 2, 0
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hosts := doveadm.NewHostMap(doveadm.Endpoint{URL: f.dove.APIURL(), User: "doveadm", Password: f.dove.Password, Destination: "tcp:mail-b:12345"})
	sw := sweep.New(o, f.st, doveadm.NewHTTP(nil, 5*time.Second), sweep.Sources(hosts), NewSinkSender(snd), reg, log)
	sh := NewHandler(Options{Budget: 10 * time.Second, Sweeper: sw}, nil, reg, log)
	mux := http.NewServeMux()
	sh.Mount(mux)
	ssv := httptest.NewServer(mux)
	t.Cleanup(ssv.Close)
	return &sweepFixture{fixture: f, sh: sh, ssv: ssv}
}

// brokerURL serves the fixture's fake Broker on its own server.
func brokerURL(t *testing.T, f *fixture) string {
	srv := httptest.NewServer(f.broker)
	t.Cleanup(srv.Close)
	return srv.URL
}

// ping is the event Knative's PingSource sends for
// config/knative/pingsource.yaml: its own type and source (the manifest
// cannot change them), the ceOverrides extension, binary mode,
// {"reason":"schedule"}.
func ping(t *testing.T) cloudevents.Event {
	t.Helper()
	ev := cloudevents.NewEvent()
	ev.SetID("ping-1")
	ev.SetSource("/apis/v1/namespaces/dovewarden/pingsources/dovewarden-sweep")
	ev.SetType(contract.TypePingSource)
	ev.SetExtension("priority", "low")
	if err := ev.SetData(cloudevents.ApplicationJSON, []byte(`{"reason":"schedule"}`)); err != nil {
		t.Fatal(err)
	}
	return ev
}

// sweepRequest is a sweep.requested asking for a new sweep, as
// dovewarden sweep and local mode send it.
func sweepRequest(t *testing.T, reason string) cloudevents.Event {
	t.Helper()
	ev, err := contract.SweepRequest(reason, "dovewarden/cli", false)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func (s *sweepFixture) post(t *testing.T, ev cloudevents.Event) (*http.Response, *cloudevents.Event, string) {
	t.Helper()
	req, err := cloudevents.NewHTTPRequestFromEvent(context.Background(), s.ssv.URL, ev)
	if err != nil {
		t.Fatal(err)
	}
	return s.do(t, req)
}

func requestedUsers(t *testing.T, evs []cloudevents.Event) map[string]contract.ReplicationRequested {
	t.Helper()
	out := map[string]contract.ReplicationRequested{}
	for _, ev := range evs {
		if ev.Type() != contract.TypeReplicationRequested {
			continue
		}
		var d contract.ReplicationRequested
		if err := ev.DataAs(&d); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[d.User]; dup {
			t.Errorf("%s requested twice", d.User)
		}
		out[d.User] = d
	}
	return out
}

func TestHandle_SweepRequestedRunsBatchByBatchThroughContinuations(t *testing.T) {
	s := newSweepFixture(t, "u1", "u2", "u3", "u4", "u5")
	_ = s.st.MarkPending(context.Background(), "p1", "mail-a", time.Now())

	ev := ping(t)
	var steps int
	for ; steps < 20; steps++ {
		resp, reply, body := s.post(t, ev)
		if resp.StatusCode == http.StatusAccepted {
			break
		}
		if resp.StatusCode != http.StatusOK || reply == nil || reply.Type() != contract.TypeSweepRequested ||
			reply.Source() != DefaultSource || reply.Extensions()["priority"] != "low" {
			t.Fatalf("step %d: %d %v %q", steps, resp.StatusCode, reply, body)
		}
		var d contract.SweepRequested
		if err := reply.DataAs(&d); err != nil || d.Sweep == "" || d.Reason != "schedule" {
			t.Fatalf("continuation data %+v, %v", d, err)
		}
		ev = *reply
	}

	got := requestedUsers(t, s.broker.all())
	if len(got) != 6 || got["p1"].Reason != "sweep:pending" || !got["u1"].Full || got["u1"].Reason != "sweep:never" || got["u1"].Priority != "low" {
		t.Errorf("requested %+v", got)
	}
	// The listing and two batches answer 200 with a continuation; the third
	// batch (6 candidates, 2 a batch) finishes and answers 202.
	if steps != 3 {
		t.Errorf("%d continuations, want 3", steps)
	}
	// The continuation of a finished sweep is stale: acknowledged, dropped.
	resp, reply, _ := s.post(t, ev)
	if resp.StatusCode != http.StatusAccepted || reply != nil {
		t.Errorf("replayed last continuation: %d %v", resp.StatusCode, reply)
	}
	if n := len(s.dove.Tracker.Calls()); n != 0 {
		t.Errorf("the sweep itself ran %d dsyncs", n)
	}
}

// runSweep posts ev and then each continuation until the sweep answers
// 202, and returns the number of continuations.
func (s *sweepFixture) runSweep(t *testing.T, ev cloudevents.Event, reason string) int {
	t.Helper()
	for steps := 0; steps < 20; steps++ {
		resp, reply, body := s.post(t, ev)
		if resp.StatusCode == http.StatusAccepted {
			return steps
		}
		if resp.StatusCode != http.StatusOK || reply == nil || reply.Type() != contract.TypeSweepRequested {
			t.Fatalf("step %d: %d %v %q", steps, resp.StatusCode, reply, body)
		}
		var d contract.SweepRequested
		if err := reply.DataAs(&d); err != nil || d.Sweep == "" || d.Reason != reason {
			t.Fatalf("continuation data %+v, %v", d, err)
		}
		ev = *reply
	}
	t.Fatal("no end after 20 steps")
	return 0
}

// The PingSource's event (dev.knative.sources.ping) starts a sweep as a
// sweep.requested does: the same steps, the same requests, its reason
// carried by the continuations.
func TestHandle_PingSourceEventStartsASweepAsSweepRequestedDoes(t *testing.T) {
	type outcome struct {
		steps int
		users map[string]contract.ReplicationRequested
	}
	run := func(ev cloudevents.Event, reason string) outcome {
		s := newSweepFixture(t, "u1", "u2", "u3", "u4", "u5")
		_ = s.st.MarkPending(context.Background(), "p1", "mail-a", time.Now())
		steps := s.runSweep(t, ev, reason)
		return outcome{steps, requestedUsers(t, s.broker.all())}
	}
	fromPing := run(ping(t), "schedule")
	fromRequest := run(sweepRequest(t, "schedule"), "schedule")
	if fromPing.steps != 3 || len(fromPing.users) != 6 || fromPing.users["p1"].Reason != "sweep:pending" {
		t.Errorf("PingSource event: %d continuations, requested %+v", fromPing.steps, fromPing.users)
	}
	if fromPing.steps != fromRequest.steps || len(fromPing.users) != len(fromRequest.users) {
		t.Errorf("PingSource event: %d continuations, %d users; sweep.requested: %d, %d",
			fromPing.steps, len(fromPing.users), fromRequest.steps, len(fromRequest.users))
	}
	for u, d := range fromRequest.users {
		if fromPing.users[u] != d {
			t.Errorf("%s: PingSource event requested %+v, sweep.requested %+v", u, fromPing.users[u], d)
		}
	}
}

// A PingSource event is never a continuation: data naming a sweep or an
// offset is refused (400, bad data) and starts nothing.
func TestHandle_PingSourceEventWithACursorIs400(t *testing.T) {
	s := newSweepFixture(t, "u1", "u2", "u3")
	for name, data := range map[string]string{
		"sweep and offset": `{"reason":"schedule","sweep":"20261129T101700Z-3f2a9c","offset":2}`,
		"offset":           `{"offset":2}`,
	} {
		ev := ping(t)
		_ = ev.SetData(cloudevents.ApplicationJSON, []byte(data))
		before := testutil.ToFloat64(s.sh.m.rejected.WithLabelValues(rejectData))
		resp, reply, body := s.post(t, ev)
		if resp.StatusCode != http.StatusBadRequest || reply != nil || !strings.Contains(body, "cannot name a sweep or an offset") {
			t.Errorf("%s: %d %v %q", name, resp.StatusCode, reply, body)
		}
		if testutil.ToFloat64(s.sh.m.rejected.WithLabelValues(rejectData)) != before+1 {
			t.Errorf("%s: rejected{%s} not counted", name, rejectData)
		}
	}
	if evs := s.broker.all(); len(evs) != 0 {
		t.Errorf("sent %d events", len(evs))
	}
	// Nothing was started: the next PingSource event starts the sweep.
	if resp, reply, body := s.post(t, ping(t)); resp.StatusCode != http.StatusOK || reply == nil {
		t.Errorf("then a plain one: %d %v %q", resp.StatusCode, reply, body)
	}
}

func TestHandle_SweepRequestedWhileOneRunsIsCovered(t *testing.T) {
	s := newSweepFixture(t, "u1", "u2", "u3")
	resp, first, _ := s.post(t, ping(t))
	if resp.StatusCode != 200 || first == nil {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	again := ping(t)
	again.SetID("ping-2")
	// Before the first batch is claimed, the first continuation may have
	// been lost: the Broker is asked to try again.
	if resp, _, _ := s.post(t, again); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second before the first batch: %d, want 503", resp.StatusCode)
	}
	if resp, _, _ := s.post(t, *first); resp.StatusCode != http.StatusOK {
		t.Fatalf("first batch: %d", resp.StatusCode)
	}

	resp, reply, body := s.post(t, again)

	if resp.StatusCode != http.StatusAccepted || reply != nil || body != "" {
		t.Errorf("second: %d %v %q", resp.StatusCode, reply, body)
	}
}

func TestHandle_SweepBadDataIs400AndBusyIs503(t *testing.T) {
	s := newSweepFixture(t, "u1", "u2", "u3")
	bad := sweepRequest(t, "cli")
	_ = bad.SetData(cloudevents.ApplicationJSON, []byte(`{"sweep":"../x","offset":1}`))
	if resp, _, body := s.post(t, bad); resp.StatusCode != 400 || !strings.Contains(body, "only letters") {
		t.Errorf("bad cursor: %d %q", resp.StatusCode, body)
	}
	_, first, _ := s.post(t, ping(t))
	s.mr.Set(state.SweepClaimKey, "another-invocation")
	resp, _, body := s.post(t, *first)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "try again later") {
		t.Errorf("busy: %d %q", resp.StatusCode, body)
	}
	s.mr.Close()
	again := ping(t)
	again.SetID("ping-3")
	if resp, _, body := s.post(t, again); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "redis") {
		t.Errorf("redis down: %d %q", resp.StatusCode, body)
	}
}

func TestHandle_SweepStructuredMode(t *testing.T) {
	s := newSweepFixture(t)
	b, _ := json.Marshal(ping(t))
	req, _ := http.NewRequest(http.MethodPost, s.ssv.URL, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/cloudevents+json")
	// Nobody to sweep: finished at once.
	if resp, reply, body := s.do(t, req); resp.StatusCode != http.StatusAccepted || reply != nil {
		t.Errorf("%d %v %q", resp.StatusCode, reply, body)
	}
}

// resultsSink records what the handler sends as new events; err, when
// set, is its answer.
type resultsSink struct {
	mu  sync.Mutex
	evs []cloudevents.Event
	err error
}

func (r *resultsSink) Send(_ context.Context, ev cloudevents.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.evs = append(r.evs, ev)
	return nil
}

// TestHandle_SweepContinuationGoesAsANewEventBeforeTheTTLRunsOut: each
// continuation that goes back as the reply costs one of the Broker's
// knativebrokerttl (255), so a sweep of more steps than that ended there.
// After maxReplyHops replies in a row, the continuation is sent as a new
// event through the results sink instead (a fresh TTL), or, if that
// fails, still as the reply.
func TestHandle_SweepContinuationGoesAsANewEventBeforeTheTTLRunsOut(t *testing.T) {
	s := newSweepFixture(t, "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8")
	results := &resultsSink{}
	s.sh.opts.Results = results
	hopsOf := func(ev *cloudevents.Event) contract.SweepRequested {
		t.Helper()
		var d contract.SweepRequested
		if err := ev.DataAs(&d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	_, reply, body := s.post(t, sweepRequest(t, "cli"))
	if reply == nil {
		t.Fatalf("no continuation: %s", body)
	}
	first := hopsOf(reply)
	if first.Hops != 1 {
		t.Fatalf("first continuation %+v, want hops 1", first)
	}
	resp, reply, body := s.post(t, *reply)
	d := hopsOf(reply)
	if resp.StatusCode != http.StatusOK || d.Hops != 2 || len(results.evs) != 0 {
		t.Fatalf("second step: %d %+v %q, %d sent", resp.StatusCode, d, body, len(results.evs))
	}
	// The last reply the count allows.
	late, err := contract.SweepContinuation(d.Sweep, d.Offset, maxReplyHops-1, d.Reason, DefaultSource)
	if err != nil {
		t.Fatal(err)
	}
	resp, reply, body = s.post(t, late)
	if resp.StatusCode != http.StatusAccepted || reply != nil || len(results.evs) != 1 {
		t.Fatalf("step at hops %d: %d %v %q, %d sent; want 202 and the continuation sent", maxReplyHops-1, resp.StatusCode, reply, body, len(results.evs))
	}
	sent := hopsOf(&results.evs[0])
	if sent.Hops != 0 || sent.Sweep != d.Sweep || sent.Offset <= d.Offset {
		t.Errorf("continuation sent %+v, want the next offset of %s with hops 0", sent, d.Sweep)
	}
	// The Broker refusing it: the reply still carries it.
	results.err = errors.New("broker answered 503")
	again, err := contract.SweepContinuation(sent.Sweep, sent.Offset, maxReplyHops-1, sent.Reason, DefaultSource)
	if err != nil {
		t.Fatal(err)
	}
	resp, reply, body = s.post(t, again)
	if resp.StatusCode != http.StatusOK || reply == nil || hopsOf(reply).Hops != maxReplyHops {
		t.Fatalf("with the results sink refusing: %d %v %q; want the reply with hops %d", resp.StatusCode, reply, body, maxReplyHops)
	}
}

// TestHandle_SweepOfEveryUser: a sweep.requested with "all" (dovewarden
// sweep --all) requests every listed user whose last successful dsync
// started before the event's time, as reason recovery, besides the
// pending, failed and stale ones; a user replicated since is left alone.
// The same sweep without it requests only the user never replicated.
func TestHandle_SweepOfEveryUser(t *testing.T) {
	for _, all := range []bool{false, true} {
		s := newSweepFixture(t, "before", "since", "never")
		now := time.Now()
		ms := func(d time.Duration) string { return strconv.FormatInt(now.Add(-d).UnixMilli(), 10) }
		s.mr.HSet(state.UserKey("before"), state.FieldLastStart, ms(time.Hour), state.FieldLastFull, "1")
		s.mr.HSet(state.UserKey("since"), state.FieldLastStart, ms(10*time.Minute), state.FieldLastFull, "1")
		ev, err := contract.SweepRequest("cli", "dovewarden/cli", all)
		if err != nil {
			t.Fatal(err)
		}
		ev.SetTime(now.Add(-30 * time.Minute)) // the lost changes were before it
		s.runSweep(t, ev, "cli")
		got := requestedUsers(t, s.broker.all())
		want := map[string]string{"never": "sweep:never"}
		if all {
			want["before"] = "sweep:recovery"
		}
		if len(got) != len(want) {
			t.Errorf("all=%v: requested %v, want %v", all, got, want)
		}
		for u, reason := range want {
			if got[u].Reason != reason {
				t.Errorf("all=%v: %s requested %+v, want reason %s", all, u, got[u], reason)
			}
		}
	}
}
