package ingest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

const appendEvent = `{"event":"imap_command_finished","hostname":"mail-a.test","start_time":"2026-11-28T23:45:46.022459Z","end_time":"2026-11-28T23:45:46.025497Z","categories":["service:imap","imap"],"fields":{"user":"u1","session":"oD2Gxl5h8L5/AAAB","cmd_tag":"BOJP5","cmd_name":"APPEND","mailbox":"INBOX","cmd_args":"INBOX <107 byte literal>","tagged_reply_state":"OK"}}`

const selectEvent = `{"event":"imap_command_finished","hostname":"mail-a.test","end_time":"2026-11-28T23:45:46.025497Z","categories":["service:imap"],"fields":{"user":"u1","cmd_name":"SELECT","tagged_reply_state":"OK"}}`

// broker is a fake Broker ingress that decodes what it receives with the
// CloudEvents SDK and answers with the status its test chooses.
type broker struct {
	mu       sync.Mutex
	events   []cloudevents.Event
	headers  []http.Header
	attempts atomic.Int32
	status   func(attempt int32) int
	delay    time.Duration
}

func (b *broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := b.attempts.Add(1)
	if b.delay > 0 {
		select {
		case <-time.After(b.delay):
		case <-r.Context().Done():
			return
		}
	}
	code := http.StatusAccepted
	if b.status != nil {
		code = b.status(n)
	}
	if code < 300 {
		ev, err := cloudevents.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b.mu.Lock()
		b.events = append(b.events, *ev)
		b.headers = append(b.headers, r.Header.Clone())
		b.mu.Unlock()
	}
	w.WriteHeader(code)
}

type fixture struct {
	store   *state.Store
	h       *Handler
	srv     *httptest.Server
	broker  *broker
	logs    *bytes.Buffer
	redis   *miniredis.Miniredis
	brokerS *httptest.Server
	reg     *prometheus.Registry
}

// answered is how many answers with code the request-duration histogram
// has timed.
func (f *fixture) answered(t *testing.T, code int) uint64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "dovewarden_ingest_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == strconv.Itoa(code) {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

func newFixture(t *testing.T, o Options, b *broker, overrides string) *fixture {
	t.Helper()
	return newFixtureBudget(t, o, b, overrides, fixtureBudget)
}

// fixtureBudget is the send budget of a fixture's Sender: far longer than
// the test broker takes, so that a loaded machine never turns its answer
// into a 503. The tests of a Broker too slow for the budget set their own.
const fixtureBudget = 10 * time.Second

func newFixtureBudget(t *testing.T, o Options, b *broker, overrides string, budget time.Duration) *fixture {
	t.Helper()
	bs := httptest.NewServer(b)
	t.Cleanup(bs.Close)
	snd, err := sink.New(sink.Options{URL: bs.URL, Overrides: overrides, Budget: budget, Retries: 3, Backoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	mr := miniredis.RunT(t)
	st := state.New(redis.NewClient(&redis.Options{Addr: mr.Addr()}))
	logs := &bytes.Buffer{}
	if o.MaxBody == 0 {
		o.MaxBody = 64 << 10
	}
	reg := prometheus.NewRegistry()
	h := NewHandler(o, snd, st, reg, slog.New(slog.NewTextHandler(logs, nil)))
	mux := http.NewServeMux()
	h.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &fixture{h: h, srv: srv, broker: b, logs: logs, redis: mr, brokerS: bs, store: st, reg: reg}
}

func (f *fixture) post(t *testing.T, path, ctype, body string, mod ...func(*http.Request)) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for _, m := range mod {
		m(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHandle_AcceptedChangeReachesBrokerInBinaryMode(t *testing.T) {
	f := newFixture(t, Options{}, &broker{}, `{"extensions":{"cluster":"eu1"}}`)
	for _, path := range []string{"/", "/events"} {
		code, body := f.post(t, path, "application/json", appendEvent)
		if code != http.StatusAccepted || !strings.Contains(body, `"accepted"`) {
			t.Fatalf("POST %s: %d %s", path, code, body)
		}
	}
	if len(f.broker.events) != 2 {
		t.Fatalf("broker got %d events, want 2", len(f.broker.events))
	}
	ev, hdr := f.broker.events[0], f.broker.headers[0]
	if hdr.Get("Ce-Id") == "" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("not binary mode: headers %v", hdr)
	}
	if ev.Type() != contract.TypeMailboxChanged || ev.Subject() != "u1" || ev.Source() != "mail-a.test" {
		t.Errorf("event %v", ev)
	}
	if want := time.Date(2026, 11, 28, 23, 45, 46, 25497000, time.UTC); !ev.Time().Equal(want) {
		t.Errorf("time %v, want the event's end time %v", ev.Time(), want)
	}
	ext := ev.Extensions()
	if ext["priority"] != "high" || ext["cluster"] != "eu1" || ext["partitionkey"] != "u1" {
		t.Errorf("extensions %v", ext)
	}
	if ev.ID() != f.broker.events[1].ID() {
		t.Errorf("the same Dovecot event got ids %s and %s", ev.ID(), f.broker.events[1].ID())
	}
	var d contract.MailboxChanged
	if err := ev.DataAs(&d); err != nil || d.User != "u1" || d.Command != "APPEND" || d.Mailbox != "INBOX" || d.Session != "oD2Gxl5h8L5/AAAB" {
		t.Errorf("data %+v, %v", d, err)
	}
	if got := testutil.ToFloat64(f.h.m.accepted.WithLabelValues("mail-a.test", "high")); got != 2 {
		t.Errorf("accepted counter %v", got)
	}
}

func TestHandle_HostFromQuery(t *testing.T) {
	f := newFixture(t, Options{}, &broker{}, "")
	if code, body := f.post(t, "/events?host=replica-b", "application/json", appendEvent); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	if got := f.broker.events[0].Source(); got != "replica-b" {
		t.Errorf("source %q", got)
	}
	if code, body := f.post(t, "/events?host=bad%20host", "application/json", appendEvent); code != http.StatusBadRequest || !strings.Contains(body, "only letters") {
		t.Errorf("bad host: %d %s", code, body)
	}
	// A colon is allowed where a URI reference has one; elsewhere the
	// host is refused as a host, not each event as an invalid CloudEvent.
	for host, ok := range map[string]bool{"mail-a:1": true, "fe80::1": true, "::1": false, "10.0.0.1:8080": false} {
		code, body := f.post(t, "/events?host="+url.QueryEscape(host), "application/json", appendEvent)
		if ok && code != http.StatusAccepted {
			t.Errorf("host %q: %d %s", host, code, body)
		}
		if !ok && (code != http.StatusBadRequest || !strings.Contains(body, `"reason":"`+rejectHost+`"`) || !strings.Contains(body, "URI reference")) {
			t.Errorf("host %q: %d %s; want 400 %s", host, code, body, rejectHost)
		}
	}
}

func TestHandle_BadInput(t *testing.T) {
	f := newFixture(t, Options{MaxBody: 2048}, &broker{}, "")
	big := `{"event":"imap_command_finished","pad":"` + strings.Repeat("x", 4096) + `"}`
	for name, tc := range map[string]struct {
		method, path, ctype, body string
		code                      int
		reason, msg               string
	}{
		"get":            {"GET", "/events", "", "", 405, rejectMethod, "POST"},
		"put":            {"PUT", "/", "application/json", appendEvent, 405, rejectMethod, "POST"},
		"other path":     {"POST", "/admin", "application/json", appendEvent, 404, rejectPath, "/events"},
		"text":           {"POST", "/events", "text/plain", appendEvent, 415, rejectContentType, "application/json"},
		"no type":        {"POST", "/events", "", appendEvent, 415, rejectContentType, "application/json"},
		"too large":      {"POST", "/events", "application/json", big, 413, rejectTooLarge, "2048"},
		"not json":       {"POST", "/events", "application/json", "{oops", 400, rejectMalformed, "invalid JSON"},
		"empty":          {"POST", "/events", "application/json", "", 400, rejectMalformed, "empty body"},
		"array":          {"POST", "/events", "application/json", "[1,2]", 400, rejectMalformed, "want a JSON object (one Dovecot event), got an array"},
		"two objects":    {"POST", "/events", "application/json", appendEvent + appendEvent, 400, rejectMalformed, "invalid JSON"},
		"wrong type":     {"POST", "/events", "application/json", `{"event":"x","fields":{"user":[]}}`, 400, rejectMalformed, "fields.user"},
		"no hostname":    {"POST", "/events", "application/json", `{"event":"mail_delivery_finished","fields":{"user":"u"}}`, 400, rejectHost, "hostname"},
		"hostile host":   {"POST", "/events", "application/json", `{"event":"mail_delivery_finished","hostname":"a/../b\n","fields":{"user":"u"}}`, 400, rejectHost, "only letters"},
		"user with CRLF": {"POST", "/events", "application/json", `{"event":"mail_delivery_finished","hostname":"h","fields":{"user":"u1\r\nX: y"}}`, 400, rejectUser, "control"},
		"user mask":      {"POST", "/events", "application/json", `{"event":"mail_delivery_finished","hostname":"h","fields":{"user":"*"}}`, 400, rejectUser, "user"},
		// JSON decoders make U+FFFD of both: the name sent is lost.
		"user with a lone surrogate": {"POST", "/events", "application/json", `{"event":"mail_delivery_finished","hostname":"h","fields":{"user":"u\ud800"}}`, 400, rejectUser, "invalid UTF-8 or a lone surrogate"},
		"user not UTF-8":             {"POST", "/events", "application/json", "{\"event\":\"mail_delivery_finished\",\"hostname\":\"h\",\"fields\":{\"user\":\"u\xff\"}}", 400, rejectUser, "U+FFFD"},
		"user option":                {"POST", "/events", "application/json", `{"event":"mail_delivery_finished","hostname":"h","fields":{"user":"-A"}}`, 400, rejectUser, "user"},
		"charset ok too":             {"POST", "/events", "application/json; charset=utf-8", "[", 400, rejectMalformed, "invalid JSON"},
	} {
		t.Run(name, func(t *testing.T) {
			before := testutil.ToFloat64(f.h.m.rejected.WithLabelValues(tc.reason))
			timed := f.answered(t, tc.code)
			req, _ := http.NewRequest(tc.method, f.srv.URL+tc.path, strings.NewReader(tc.body))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.msg) {
				t.Errorf("%s %s: %d %s; want %d mentioning %q", tc.method, tc.path, resp.StatusCode, b, tc.code, tc.msg)
			}
			if got := testutil.ToFloat64(f.h.m.rejected.WithLabelValues(tc.reason)); got != before+1 {
				t.Errorf("rejected{reason=%s} went from %v to %v", tc.reason, before, got)
			}
			if got := f.answered(t, tc.code); got != timed+1 {
				t.Errorf("request_duration_seconds{code=%d} timed %d answers, then %d", tc.code, timed, got)
			}
			// Only an oversized body closes the connection: the server
			// does not read what is left of it.
			if resp.Close != (tc.code == http.StatusRequestEntityTooLarge) {
				t.Errorf("connection closed after the answer: %v", resp.Close)
			}
		})
	}
	if n := len(f.broker.events); n != 0 {
		t.Errorf("bad input reached the broker %d times", n)
	}
	// Still serving.
	accepted := f.answered(t, http.StatusAccepted)
	if code, _ := f.post(t, "/events", "application/json", appendEvent); code != http.StatusAccepted {
		t.Errorf("after bad input: %d", code)
	}
	if got := f.answered(t, http.StatusAccepted); got != accepted+1 {
		t.Errorf("request_duration_seconds{code=202} timed %d answers, then %d", accepted, got)
	}
}

// TestHandle_ContentCodingIsRefusedAs415: a body in a content coding
// (gzip, deflate, ...) is refused with 415 and the reason, which RFC 9110
// (15.5.16) gives for a coding the server does not take, with
// Accept-Encoding naming the one it takes; it was read as JSON and
// answered 400 "invalid JSON" (or, sent uncompressed, taken). "identity"
// is no coding at all.
func TestHandle_ContentCodingIsRefusedAs415(t *testing.T) {
	f := newFixture(t, Options{}, &broker{}, "")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(appendEvent))
	zw.Close()
	for name, tc := range map[string]struct {
		codings []string
		body    string
	}{
		"gzip":                   {[]string{"gzip"}, gz.String()},
		"gzip, body not in it":   {[]string{"gzip"}, appendEvent},
		"two codings":            {[]string{"identity, br"}, appendEvent},
		"in two header lines":    {[]string{"identity", "deflate"}, appendEvent},
		"an unknown coding":      {[]string{"x-snappy"}, appendEvent},
		"upper case gzip, space": {[]string{" GZIP "}, gz.String()},
	} {
		t.Run(name, func(t *testing.T) {
			before := testutil.ToFloat64(f.h.m.rejected.WithLabelValues(rejectContentEncoding))
			req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/events", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			for _, c := range tc.codings {
				req.Header.Add("Content-Encoding", c)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(b), `"reason":"content_encoding"`) || !strings.Contains(string(b), "content coding") {
				t.Errorf("%d %s; want 415 with reason content_encoding", resp.StatusCode, b)
			}
			if got := resp.Header.Get("Accept-Encoding"); got != "identity" {
				t.Errorf("Accept-Encoding %q, want identity", got)
			}
			if got := testutil.ToFloat64(f.h.m.rejected.WithLabelValues(rejectContentEncoding)); got != before+1 {
				t.Errorf("rejected{reason=content_encoding} went from %v to %v", before, got)
			}
		})
	}
	if n := len(f.broker.events); n != 0 {
		t.Errorf("a coded body reached the broker %d times", n)
	}
	for _, c := range []string{"identity", "Identity", ""} {
		code, body := f.post(t, "/events", "application/json", appendEvent, func(r *http.Request) { r.Header.Set("Content-Encoding", c) })
		if code != http.StatusAccepted {
			t.Errorf("Content-Encoding %q: %d %s, want 202", c, code, body)
		}
	}
}

// TestHandle_OversizedBodyRefusedBeforeItIsSent: a request whose length
// says it is over the limit is answered 413 at once; one that asks
// "Expect: 100-continue" is not asked to send it.
func TestHandle_OversizedBodyRefusedBeforeItIsSent(t *testing.T) {
	f := newFixture(t, Options{MaxBody: 2048}, &broker{}, "")
	c, err := net.Dial("tcp", strings.TrimPrefix(f.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", 10<<20)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), "exceeds 2048") {
		t.Fatalf("%d %s; want 413 without a 100 Continue first", resp.StatusCode, b)
	}
}

// TestHandle_AChangeReachesTheBrokerWhenDovecotStopsWaiting: Dovecot's
// exporter gives up after its timeout and drops the event; the change it
// sent is still handed to a Broker that answers within the send budget,
// not cancelled with Dovecot's request.
func TestHandle_AChangeReachesTheBrokerWhenDovecotStopsWaiting(t *testing.T) {
	b := &broker{delay: 80 * time.Millisecond}
	f := newFixture(t, Options{}, b, "")
	c := &http.Client{Timeout: 20 * time.Millisecond}
	if resp, err := c.Post(f.srv.URL+"/events", "application/json", strings.NewReader(appendEvent)); err == nil {
		resp.Body.Close()
		t.Fatalf("answered %d before the client gave up: the test tests nothing", resp.StatusCode)
	}
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(f.h.m.accepted.WithLabelValues("mail-a.test", "high")) != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the change was not handed to the Broker after the client gave up\n%s", f.logs)
		}
	}
}

func TestHandle_DroppedEventIs200AndCounted(t *testing.T) {
	f := newFixture(t, Options{}, &broker{}, "")
	code, body := f.post(t, "/events", "application/json", selectEvent)
	if code != http.StatusOK || !strings.Contains(body, `"read_only"`) {
		t.Fatalf("%d %s", code, body)
	}
	if got := testutil.ToFloat64(f.h.m.dropped.WithLabelValues("mail-a.test", "read_only")); got != 1 {
		t.Errorf("dropped counter %v", got)
	}
	if got := testutil.ToFloat64(f.h.m.received.WithLabelValues("mail-a.test")); got != 1 {
		t.Errorf("received counter %v", got)
	}
	if len(f.broker.events) != 0 {
		t.Error("dropped event reached the broker")
	}
}

// TestHandle_AChangeWithoutAUserIsLogged: a change whose event names no
// user (an exporter whose fields leave out user) is dropped as no_user,
// counted and logged once a minute per host, naming what to fix: every
// change of that host is lost until then. A read-only command without a
// user (before login) is dropped as read_only, unlogged.
func TestHandle_AChangeWithoutAUserIsLogged(t *testing.T) {
	f := newFixture(t, Options{}, &broker{}, "")
	noUser := strings.Replace(appendEvent, `"user":"u1",`, "", 1)
	if noUser == appendEvent {
		t.Fatal("appendEvent has no user field to leave out")
	}
	for range 3 {
		code, body := f.post(t, "/events", "application/json", noUser)
		if code != http.StatusOK || !strings.Contains(body, `"no_user"`) {
			t.Fatalf("%d %s", code, body)
		}
	}
	if got := testutil.ToFloat64(f.h.m.dropped.WithLabelValues("mail-a.test", "no_user")); got != 3 {
		t.Errorf("dropped counter %v, want 3", got)
	}
	logs := f.logs.String()
	if n := strings.Count(logs, "names no user"); n != 1 {
		t.Fatalf("%d warnings for three changes without a user within a minute, want 1:\n%s", n, logs)
	}
	for _, want := range []string{"level=WARN", "host=mail-a.test", "command=APPEND", "fields", "--username-format"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the warning lacks %q:\n%s", want, logs)
		}
	}
	f.logs.Reset()
	code, body := f.post(t, "/events", "application/json", strings.Replace(selectEvent, `"user":"u1",`, "", 1))
	if code != http.StatusOK || !strings.Contains(body, `"read_only"`) {
		t.Fatalf("SELECT without a user: %d %s", code, body)
	}
	if strings.Contains(f.logs.String(), "no user") {
		t.Errorf("a read-only command without a user was logged:\n%s", f.logs.String())
	}
}

func TestHandle_Auth(t *testing.T) {
	basic := newFixture(t, Options{BasicUser: "dovecot", BasicPassword: "s3cret"}, &broker{}, "")
	token := newFixture(t, Options{Token: "tok-123"}, &broker{}, "")
	withBasic := func(u, p string) func(*http.Request) { return func(r *http.Request) { r.SetBasicAuth(u, p) } }
	withHeader := func(v string) func(*http.Request) { return func(r *http.Request) { r.Header.Set("Authorization", v) } }
	for name, tc := range map[string]struct {
		f    *fixture
		mod  func(*http.Request)
		code int
	}{
		"basic ok":          {basic, withBasic("dovecot", "s3cret"), 202},
		"basic wrong pass":  {basic, withBasic("dovecot", "s3cret!"), 401},
		"basic wrong user":  {basic, withBasic("Dovecot", "s3cret"), 401},
		"basic missing":     {basic, func(*http.Request) {}, 401},
		"basic given token": {basic, withHeader("Bearer s3cret"), 401},
		"token ok":          {token, withHeader("Bearer tok-123"), 202},
		"token wrong":       {token, withHeader("Bearer tok-1234"), 401},
		"token as basic":    {token, withBasic("x", "tok-123"), 401},
		"token missing":     {token, func(*http.Request) {}, 401},
		// Auth schemes are case-insensitive (RFC 9110 section 11.1).
		"token lower-case scheme": {token, withHeader("bearer tok-123"), 202},
		"token upper-case scheme": {token, withHeader("BEARER tok-123"), 202},
		"token no scheme":         {token, withHeader("tok-123"), 401},
		"token other scheme":      {token, withHeader("Token tok-123"), 401},
		"basic lower-case scheme": {basic, withHeader("basic " + base64.StdEncoding.EncodeToString([]byte("dovecot:s3cret"))), 202},
	} {
		t.Run(name, func(t *testing.T) {
			code, body := tc.f.post(t, "/events", "application/json", appendEvent, tc.mod)
			if code != tc.code {
				t.Errorf("%d %s, want %d", code, body, tc.code)
			}
		})
	}
	if got := testutil.ToFloat64(basic.h.m.rejected.WithLabelValues(rejectAuth)); got != 4 {
		t.Errorf("basic: unauthorized counter %v, want 4", got)
	}
}

func TestHandle_BrokerFailures(t *testing.T) {
	for name, tc := range map[string]struct {
		b        *broker
		closed   bool
		code     int
		attempts int32
	}{
		"refuses connections":    {&broker{}, true, 503, 0},
		"answers 500 always":     {&broker{status: func(int32) int { return 500 }}, false, 503, 4},
		"answers 503 then 202":   {&broker{status: func(n int32) int { return map[bool]int{true: 503, false: 202}[n == 1] }}, false, 202, 2},
		"answers 400 (no retry)": {&broker{status: func(int32) int { return 400 }}, false, 503, 1},
		// Slower than the budget (150 ms) by far: answered 503 when the
		// budget ends, not 202 when the Broker does (Dovecot gives up
		// after 250 ms by default; a wait for the Broker would lose the
		// event without the 503 and the pending mark).
		"too slow": {&broker{delay: time.Second}, false, 503, -1},
	} {
		t.Run(name, func(t *testing.T) {
			budget := fixtureBudget
			if tc.b.delay > 0 {
				budget = 150 * time.Millisecond
			}
			f := newFixtureBudget(t, Options{}, tc.b, "", budget)
			if tc.closed {
				f.brokerS.Close()
			}
			code, body := f.post(t, "/events", "application/json", appendEvent)
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, body, tc.code)
			}
			if tc.attempts >= 0 && tc.b.attempts.Load() != tc.attempts {
				t.Errorf("broker saw %d attempts, want %d", tc.b.attempts.Load(), tc.attempts)
			}
			if code == 202 {
				return
			}
			if got := testutil.ToFloat64(f.h.m.sendFails.WithLabelValues("mail-a.test")); got != 1 {
				t.Errorf("send failures %v", got)
			}
			if log := f.logs.String(); !strings.Contains(log, "user=u1") || !strings.Contains(log, "host=mail-a.test") || !strings.Contains(log, "level=ERROR") {
				t.Errorf("log does not name user and host: %s", log)
			}
			score, err := f.redis.ZScore(state.PendingKey, "u1")
			if err != nil || int64(score) != time.Date(2026, 11, 28, 23, 45, 46, 25497000, time.UTC).UnixMilli() {
				t.Errorf("pending mark %v, %v", score, err)
			}
			if got := testutil.ToFloat64(f.h.m.pending.WithLabelValues("ok")); got != 1 {
				t.Errorf("pending marks %v", got)
			}
		})
	}
}

// TestHandle_ChangesNotHandedToTheBrokerAreLoggedAFewTimesAMinute: while
// the Broker refuses (a full lane refuses at the rate Dovecot sends),
// every event used to log an error line. Now 5 a minute are logged per
// host and outcome of the pending mark; every one is counted and marked.
func TestHandle_ChangesNotHandedToTheBrokerAreLoggedAFewTimesAMinute(t *testing.T) {
	f := newFixture(t, Options{}, &broker{status: func(int32) int { return 400 }}, "")
	const events = 20
	for i := range events {
		ev := strings.Replace(appendEvent, `"user":"u1"`, fmt.Sprintf(`"user":"u%d"`, i), 1)
		if code, body := f.post(t, "/events", "application/json", ev); code != http.StatusServiceUnavailable {
			t.Fatalf("event %d: %d %s", i, code, body)
		}
	}
	logs := f.logs.String()
	if n := strings.Count(logs, "change not handed to the broker"); n != sendFailLogBurst {
		t.Errorf("%d lines logged for %d changes, want %d:\n%s", n, events, sendFailLogBurst, logs)
	}
	// The line as docs/operations.md shows it.
	if !strings.Contains(logs, `msg="change not handed to the broker; logged 5 times a minute per host and recovery"`) {
		t.Errorf("the line does not say its bound as the docs show it:\n%s", logs)
	}
	if !strings.Contains(logs, "user=u0 ") || !strings.Contains(logs, `recovery="marked pending for the sweep"`) {
		t.Errorf("the first line does not name the user and the recovery:\n%s", logs)
	}
	if got := testutil.ToFloat64(f.h.m.sendFails.WithLabelValues("mail-a.test")); got != events {
		t.Errorf("send failures counted %v, want %d", got, events)
	}
	if n, err := f.redis.ZMembers(state.PendingKey); err != nil || len(n) != events {
		t.Errorf("pending marks %d (%v), want %d", len(n), err, events)
	}
	// Another outcome of the mark has lines of its own.
	f.redis.Close()
	if code, _ := f.post(t, "/events", "application/json", appendEvent); code != http.StatusServiceUnavailable {
		t.Fatalf("with Redis down: %d", code)
	}
	if logs := f.logs.String(); !strings.Contains(logs, "marking pending failed") || !strings.Contains(logs, "dovewarden sweep --all") {
		t.Errorf("a change that could not be marked is not logged with what to do:\n%s", logs)
	}
	// Only that one is lost: the marked ones wait for the sweep.
	if got := testutil.ToFloat64(f.h.m.lost.WithLabelValues("mail-a.test")); got != 1 {
		t.Errorf("changes lost counted %v, want 1", got)
	}
}

// refusingSender is a Broker that refuses every change.
type refusingSender struct{}

func (refusingSender) Send(context.Context, cloudevents.Event) error {
	return errors.New("broker: 503 Service Unavailable")
}

// Without Redis, a change the Broker refuses is recorded nowhere: it is
// counted as lost, and its line says what to do.
func TestHandle_WithoutRedisARefusedChangeIsLost(t *testing.T) {
	var logs bytes.Buffer
	h := NewHandler(Options{MaxBody: 64 << 10}, refusingSender{}, nil, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&logs, nil)))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/events", strings.NewReader(appendEvent))
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "no redis configured") {
		t.Fatalf("%d %s", rec.Code, rec.Body.String())
	}
	if got := testutil.ToFloat64(h.m.lost.WithLabelValues("mail-a.test")); got != 1 {
		t.Errorf("changes lost counted %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "dovewarden sweep --all") {
		t.Errorf("the line does not say what to do:\n%s", logs.String())
	}
}

func TestHandle_RedisDownStillAnswers503(t *testing.T) {
	f := newFixture(t, Options{}, &broker{}, "")
	f.brokerS.Close()
	f.redis.Close()
	code, body := f.post(t, "/events", "application/json", appendEvent)
	if code != 503 || !strings.Contains(body, "marking pending failed") {
		t.Fatalf("%d %s", code, body)
	}
	if got := testutil.ToFloat64(f.h.m.pending.WithLabelValues("error")); got != 1 {
		t.Errorf("pending errors %v", got)
	}
}

func TestHandle_HostLabelsAreBounded(t *testing.T) {
	f := newFixture(t, Options{}, &broker{}, "")
	for i := 0; i < maxHostLabels+10; i++ {
		f.h.m.hostLabel("h" + strings.Repeat("x", i))
	}
	if got := f.h.m.hostLabel("one-more"); got != otherHost {
		t.Errorf("label %q after %d hosts, want %q", got, maxHostLabels, otherHost)
	}
	if got := f.h.m.hostLabel("h"); got != "h" {
		t.Errorf("known host label %q", got)
	}
}

func TestHandle_UsernameFormat(t *testing.T) {
	uf, err := dovecot.ParseUsernameFormat("%Ln")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, Options{Username: uf}, &broker{}, "")
	lmtp := `{"event":"mail_delivery_finished","hostname":"mail-a.test","end_time":"2026-11-29T00:32:29.264809Z","categories":["service:lmtp"],"fields":{"rcpt_to":"U1@mail-a.test","user":"U1@mail-a.test"}}`
	if code, body := f.post(t, "/events", "application/json", lmtp); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	if got := f.broker.events[0].Subject(); got != "u1" {
		t.Errorf("subject %q, want the canonical user u1", got)
	}
}

// With --username-format %Lu (the default) where Dovecot 2.3 strips the
// domain, its LMTP events name the recipient as addressed (U1@mail-a.test,
// normalised u1@mail-a.test) and its IMAP events the user as logged in
// (u1): one mailbox under two names, each with its own lock and record,
// which nothing reported. The first such pair is logged once; with the
// matching format (%Ln) both are u1 and nothing is.
func TestHandle_OneUserNamedTwoWaysIsLoggedOnce(t *testing.T) {
	lmtp := func(user string) string {
		return `{"event":"mail_delivery_finished","hostname":"mail-a.test","end_time":"2026-11-29T00:32:29.264809Z","categories":["service:lmtp"],"fields":{"rcpt_to":"` + user + `","user":"` + user + `"}}`
	}
	lu, err := dovecot.ParseUsernameFormat("%Lu")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, Options{Username: lu}, &broker{}, "")
	for _, body := range []string{appendEvent, lmtp("U2@mail-a.test"), lmtp("U1@mail-a.test"), appendEvent, lmtp("u1@mail-a.test"), strings.Replace(appendEvent, `"u1"`, `"u2"`, 1)} {
		if code, got := f.post(t, "/events", "application/json", body); code != http.StatusAccepted {
			t.Fatalf("%d %s", code, got)
		}
	}
	logs := f.logs.String()
	if n := strings.Count(logs, "changes name one user two ways"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, logs)
	}
	for _, want := range []string{"user=u1@mail-a.test also=u1", "username_format=%Lu", "auth_username_format"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}

	ln, err := dovecot.ParseUsernameFormat("%Ln")
	if err != nil {
		t.Fatal(err)
	}
	f = newFixture(t, Options{Username: ln}, &broker{}, "")
	for _, body := range []string{appendEvent, lmtp("U1@mail-a.test")} {
		if code, got := f.post(t, "/events", "application/json", body); code != http.StatusAccepted {
			t.Fatalf("%d %s", code, got)
		}
	}
	if logs := f.logs.String(); strings.Contains(logs, "two ways") {
		t.Errorf("with %%Ln both are u1, but:\n%s", logs)
	}
}

func TestHandle_StampsChangesWithTheRedisClock(t *testing.T) {
	b := &broker{}
	f := newFixture(t, Options{}, b, "")
	f.h.opts.Clock = f.store
	redisNow := time.Date(2026, 11, 29, 12, 0, 0, 123000000, time.UTC)
	f.redis.SetTime(redisNow)
	if code, body := f.post(t, "/events", "application/json", appendEvent); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	var d contract.MailboxChanged
	if err := b.events[0].DataAs(&d); err != nil {
		t.Fatal(err)
	}
	if !d.ObservedAt.Equal(redisNow) {
		t.Errorf("observed_at %v, want Redis's clock %v", d.ObservedAt, redisNow)
	}

	// Redis gone: the change still goes out, unstamped, and it is counted.
	f.redis.Close()
	if code, body := f.post(t, "/events", "application/json", appendEvent); code != http.StatusAccepted {
		t.Fatalf("redis down: %d %s", code, body)
	}
	var d2 contract.MailboxChanged
	if err := b.events[1].DataAs(&d2); err != nil {
		t.Fatal(err)
	}
	if !d2.ObservedAt.IsZero() {
		t.Errorf("observed_at %v without Redis", d2.ObservedAt)
	}
	if got := testutil.ToFloat64(f.h.m.observeFails); got != 1 {
		t.Errorf("observe failures %v", got)
	}
}

// failingClock is a Redis clock that does not answer within ingest's
// bound, and counts the asks.
type failingClock struct{ asked atomic.Int32 }

func (c *failingClock) Now(ctx context.Context) (time.Time, error) {
	c.asked.Add(1)
	<-ctx.Done()
	return time.Time{}, ctx.Err()
}

// TestHandle_ClockNotAskedForASecondAfterItFailed: while Redis is down
// every ask of its clock waits the whole bound, which held each change
// 50 ms. After a failure the clock is left alone for a second: changes go
// out unstamped at once, and are counted as unstamped.
func TestHandle_ClockNotAskedForASecondAfterItFailed(t *testing.T) {
	clock := &failingClock{}
	b := &broker{}
	f := newFixture(t, Options{Clock: clock}, b, "")
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f.h.now = func() time.Time { return now }
	post := func() {
		t.Helper()
		if code, body := f.post(t, "/events", "application/json", appendEvent); code != http.StatusAccepted {
			t.Fatalf("%d %s", code, body)
		}
	}
	post()
	for range 5 {
		now = now.Add(100 * time.Millisecond)
		post()
	}
	if got := clock.asked.Load(); got != 1 {
		t.Errorf("clock asked %d times within a second of its failure, want 1", got)
	}
	now = now.Add(time.Second)
	post()
	if got := clock.asked.Load(); got != 2 {
		t.Errorf("clock asked %d times, want 2: not asked again a second after it failed", got)
	}
	if got := testutil.ToFloat64(f.h.m.observeFails); got != 7 {
		t.Errorf("unstamped changes counted %v, want 7", got)
	}
	if len(b.events) != 7 {
		t.Errorf("%d changes handed to the Broker, want 7", len(b.events))
	}

	// A client that left while the clock was asked says nothing of
	// Redis: the clock is asked at the next change.
	now = now.Add(time.Hour)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	var c change.Change
	f.h.observe(gone, &c)
	f.h.observe(context.Background(), &c)
	if got := clock.asked.Load(); got != 4 {
		t.Errorf("clock asked %d times, want 4: a client's leaving paused it", got)
	}
}

// Protect asks for the handler's credentials in front of another handler
// (401 with the challenge, counted as unauthorized), and is a no-op when
// ingest has none.
func TestProtect(t *testing.T) {
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	token := newFixture(t, Options{Token: "tok-123"}, &broker{}, "")
	open := newFixture(t, Options{}, &broker{}, "")
	for name, tc := range map[string]struct {
		f         *fixture
		auth      string
		code      int
		challenge string
	}{
		"right token":    {token, "Bearer tok-123", http.StatusTeapot, ""},
		"wrong token":    {token, "Bearer tok-12", http.StatusUnauthorized, `Bearer realm="dovewarden"`},
		"none":           {token, "", http.StatusUnauthorized, `Bearer realm="dovewarden"`},
		"no credentials": {open, "", http.StatusTeapot, ""},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/status/alice", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		tc.f.h.Protect(inner).ServeHTTP(rec, req)
		if rec.Code != tc.code || rec.Header().Get("WWW-Authenticate") != tc.challenge {
			t.Errorf("%s: %d, challenge %q; want %d, %q", name, rec.Code, rec.Header().Get("WWW-Authenticate"), tc.code, tc.challenge)
		}
	}
	if got := testutil.ToFloat64(token.h.m.rejected.WithLabelValues(rejectAuth)); got != 2 {
		t.Errorf("unauthorized counter %v, want 2", got)
	}
}

// TestHandle_ALongUIDSetFitsTheDefaultBody: a command line within
// Dovecot's default imap_max_line_length (64 KiB) appears twice in its
// event (cmd_args, cmd_human_args); the default --max-body takes it, or
// the change would be lost (413, and Dovecot never retries).
func TestHandle_ALongUIDSetFitsTheDefaultBody(t *testing.T) {
	cfg, err := Load(flag.NewFlagSet("ingest", flag.ContinueOnError), []string{"--broker-url", "http://127.0.0.1:1"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	var uids []string
	for uid := 1; uid < 14000; uid += 2 {
		uids = append(uids, strconv.Itoa(uid))
	}
	args := strings.Join(uids, ",") + ` +FLAGS.SILENT (\\Flagged)`
	if len(args) >= 64<<10 {
		t.Fatalf("the command line is %d bytes, over Dovecot's default", len(args))
	}
	event := `{"event":"imap_command_finished","hostname":"mail-a.test","end_time":"2026-11-29T17:05:08.750234Z","categories":["service:imap","imap"],"fields":{"user":"u1","session":"s1","cmd_tag":"a1","cmd_name":"UID STORE","cmd_input_name":"UID STORE","cmd_args":"` + args + `","cmd_human_args":"` + args + `","tagged_reply_state":"OK","tagged_reply":"OK Store completed.","mailbox":"INBOX"}}`
	f := newFixture(t, Options{MaxBody: cfg.MaxBody}, &broker{}, "")
	if code, body := f.post(t, "/events", "application/json", event); code != http.StatusAccepted {
		t.Fatalf("a %d-byte event: %d %s", len(event), code, body)
	}
}

// TestLoad_ABrokerURLsPasswordIsNotShown: a refused --broker-url is
// named in the error without its password.
func TestLoad_ABrokerURLsPasswordIsNotShown(t *testing.T) {
	_, err := Load(flag.NewFlagSet("ingest", flag.ContinueOnError), []string{"--broker-url", "ftp://u:topsecret9@broker/"}, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "broker-url") || strings.Contains(err.Error(), "topsecret9") {
		t.Errorf("err %v: want broker-url named, without the password", err)
	}
}

// TestHandle_AnEventWithoutTimeTakesWhenIngestReceivedIt: an event with
// neither start_time nor end_time is a change at the latest when ingest
// received it: the CloudEvent's time and a pending mark (broker down)
// carry that time, never a zero one (a year-1 mark that ZADD LT would
// never replace, and that status reads as no change at all). With the
// Redis clock set, the stamp is that clock's.
func TestHandle_AnEventWithoutTimeTakesWhenIngestReceivedIt(t *testing.T) {
	noTime := `{"event":"imap_command_finished","hostname":"mail-a.test","categories":["service:imap"],"fields":{"user":"u1","cmd_name":"APPEND","mailbox":"INBOX","tagged_reply_state":"OK"}}`

	b := &broker{}
	f := newFixture(t, Options{}, b, "")
	before := time.Now()
	if code, body := f.post(t, "/events", "application/json", noTime); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	if at := b.events[0].Time(); at.Before(before.Add(-time.Millisecond)) || at.After(time.Now()) {
		t.Errorf("CloudEvent time %v, want when ingest received it (after %v)", at, before)
	}

	// With the Redis clock: its time.
	redisNow := time.Date(2026, 11, 29, 12, 0, 0, 123000000, time.UTC)
	f.h.opts.Clock = f.store
	f.redis.SetTime(redisNow)
	if code, body := f.post(t, "/events", "application/json", noTime); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	if at := b.events[1].Time(); !at.Equal(redisNow) {
		t.Errorf("CloudEvent time %v, want the Redis clock's %v", at, redisNow)
	}

	// The broker down: the pending mark has the receipt time, and a later
	// mark of an older change still replaces it.
	f = newFixture(t, Options{}, &broker{}, "")
	f.brokerS.Close()
	before = time.Now()
	if code, body := f.post(t, "/events", "application/json", noTime); code != http.StatusServiceUnavailable {
		t.Fatalf("%d %s", code, body)
	}
	score, err := f.redis.ZScore(state.PendingKey, "u1")
	if err != nil || int64(score) < before.UnixMilli() || int64(score) > time.Now().UnixMilli() {
		t.Fatalf("pending mark %v (%v), want when ingest received it (from %d)", int64(score), err, before.UnixMilli())
	}
	if code, body := f.post(t, "/events", "application/json", appendEvent); code != http.StatusServiceUnavailable {
		t.Fatalf("%d %s", code, body)
	}
	if score, _ := f.redis.ZScore(state.PendingKey, "u1"); int64(score) != time.Date(2026, 11, 28, 23, 45, 46, 25497000, time.UTC).UnixMilli() {
		t.Errorf("pending mark %d, want the older change's time", int64(score))
	}
}

// TestHandle_LargeEventWithinMaxBody: --max-body is the only limit on an
// event's size. With it raised to 4 MiB, an event of 2 MiB (a command with
// very long arguments) is parsed and sent; one over it is refused with 413.
func TestHandle_LargeEventWithinMaxBody(t *testing.T) {
	f := newFixture(t, Options{MaxBody: 4 << 20}, &broker{}, "")
	pad := func(n int) string {
		return strings.Replace(appendEvent, `"fields":{`, `"fields":{"cmd_args":"`+strings.Repeat("1,", n/2)+`",`, 1)
	}
	if code, body := f.post(t, "/events", "application/json", pad(2<<20)); code != http.StatusAccepted {
		t.Errorf("a 2 MiB event under a 4 MiB limit: %d %s", code, body)
	}
	if code, body := f.post(t, "/events", "application/json", pad(5<<20)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a 5 MiB event under a 4 MiB limit: %d %s", code, body)
	}
}

// A misconfigured exporter is refused at every event, and Dovecot drops
// each: a wrong path (404, which DovewardenIngestRejectingRequests leaves
// out with the scanners') or missing credentials (401) used to show only
// in a counter. Each reason is now logged, with the fix, at most once a
// minute; a GET to a wrong path (a scanner, a browser) is not.
func TestHandle_RefusalsAreLoggedOnceAMinutePerReason(t *testing.T) {
	f := newFixture(t, Options{BasicUser: "dovecot", BasicPassword: "s3cret"}, &broker{}, "")
	auth := func(r *http.Request) { r.SetBasicAuth("dovecot", "s3cret") }
	for range 3 {
		if code, _ := f.post(t, "/event", "application/json", appendEvent, auth); code != http.StatusNotFound {
			t.Fatalf("wrong path: %d", code)
		}
		if code, _ := f.post(t, "/events", "application/json", appendEvent); code != http.StatusUnauthorized {
			t.Fatalf("no credentials: %d", code)
		}
	}
	resp, err := http.Get(f.srv.URL + "/wp-login.php")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	logs := f.logs.String()
	if n := strings.Count(logs, "request refused"); n != 2 {
		t.Fatalf("%d refusals logged, want one per reason:\n%s", n, logs)
	}
	for _, want := range []string{`msg="request refused; logged once a minute per reason"`, "reason=path code=404 path=/event", "must end in /events", "reason=unauthorized code=401 path=/events",
		"http://USER:PASSWORD@HOST/events"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "s3cret") || strings.Contains(logs, "wp-login") {
		t.Errorf("log shows a password or a scanner's GET:\n%s", logs)
	}
}

// TestHandle_ClockPauseEndsWhenTheClockStepsBack: the pause after a
// failure is a second; a wall clock stepped back (an NTP step) after the
// failure must not stretch it by the step.
func TestHandle_ClockPauseEndsWhenTheClockStepsBack(t *testing.T) {
	clock := &failingClock{}
	f := newFixture(t, Options{Clock: clock}, &broker{}, "")
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f.h.now = func() time.Time { return now }
	var c change.Change
	f.h.observe(context.Background(), &c)
	if got := clock.asked.Load(); got != 1 {
		t.Fatalf("clock asked %d times, want 1", got)
	}
	// The wall clock steps back an hour, then two seconds pass.
	now = now.Add(-time.Hour + 2*time.Second)
	f.h.observe(context.Background(), &c)
	if got := clock.asked.Load(); got != 2 {
		t.Errorf("clock asked %d times two seconds after its failure, the wall clock stepped back an hour; want 2: the pause lasts the step", got)
	}
}
