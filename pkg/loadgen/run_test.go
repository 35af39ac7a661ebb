package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// receiver is a test ingest that checks each request the way a real one
// would decode it and answers with the status answer() picks.
type receiver struct {
	t      *testing.T
	answer func(n int64) int
	n      atomic.Int64
	mu     sync.Mutex
	status map[int]uint64
	at     []time.Time
	auth   []string
}

func newReceiver(t *testing.T, answer func(n int64) int) (*receiver, *httptest.Server) {
	r := &receiver{t: t, answer: answer, status: map[int]uint64{}}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	n := r.n.Add(1)
	body, err := io.ReadAll(req.Body)
	switch {
	case err != nil:
		r.t.Errorf("read body: %v", err)
	case req.Method != http.MethodPost || req.URL.Path != "/events":
		r.t.Errorf("got %s %s, want POST /events", req.Method, req.URL.Path)
	case req.Header.Get("Content-Type") != "application/json":
		r.t.Errorf("Content-Type %q", req.Header.Get("Content-Type"))
	case !json.Valid(body):
		r.t.Errorf("invalid JSON body: %s", body)
	}
	code := http.StatusNoContent
	if r.answer != nil {
		code = r.answer(n)
	}
	r.mu.Lock()
	r.status[code]++
	r.at = append(r.at, time.Now())
	r.auth = append(r.auth, req.Header.Get("Authorization"))
	r.mu.Unlock()
	w.WriteHeader(code)
}

func TestRun_CountsStatuses(t *testing.T) {
	rec, srv := newReceiver(t, func(n int64) int {
		switch {
		case n%10 == 0:
			return http.StatusServiceUnavailable
		case n%7 == 0:
			return http.StatusUnauthorized
		case n%2 == 0:
			return http.StatusAccepted
		}
		return http.StatusOK
	})
	rep, err := Run(t.Context(), Config{URL: srv.URL + "/events", Count: 300, Concurrency: 4})
	if !errors.Is(err, ErrRequestsFailed) {
		t.Fatalf("error %v, want ErrRequestsFailed", err)
	}
	if rep.Sent != 300 || rep.Latency.Count != 300 {
		t.Fatalf("sent %d, answered %d, want 300", rep.Sent, rep.Latency.Count)
	}
	for code, n := range rec.status {
		if rep.Status[code] != n {
			t.Errorf("status %d: report %d, receiver %d", code, rep.Status[code], n)
		}
	}
	if want := rec.status[200] + rec.status[202]; rep.OK != want {
		t.Errorf("ok %d, want %d", rep.OK, want)
	}
	if rep.Failed() != rec.status[401]+rec.status[503] || rep.FirstError == "" {
		t.Errorf("failed %d (first %q), want %d", rep.Failed(), rep.FirstError, rec.status[401]+rec.status[503])
	}
	if rep.Latency.P50 <= 0 || rep.Latency.P50 > rep.Latency.P99 || rep.Latency.P99 > rep.Latency.Max {
		t.Errorf("latency out of order: %+v", rep.Latency)
	}

	rep, err = Run(t.Context(), Config{URL: srv.URL + "/events", Count: 20, AllowErrors: true})
	if err != nil || rep.Failed() == 0 {
		t.Fatalf("with AllowErrors: error %v, failed %d", err, rep.Failed())
	}
}

func TestRun_StopsAtCount(t *testing.T) {
	rec, srv := newReceiver(t, nil)
	rep, err := Run(t.Context(), Config{URL: srv.URL + "/events", Count: 123, Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 123 || rep.OK != 123 || rec.n.Load() != 123 {
		t.Fatalf("sent %d ok %d received %d, want 123", rep.Sent, rep.OK, rec.n.Load())
	}
}

func TestRun_StopsAtDuration(t *testing.T) {
	rec, srv := newReceiver(t, nil)
	start := time.Now()
	rep, err := Run(t.Context(), Config{URL: srv.URL + "/events", Duration: 300 * time.Millisecond, Concurrency: 2})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if elapsed < 300*time.Millisecond || elapsed > 2*time.Second {
		t.Fatalf("run took %v, want about 300ms", elapsed)
	}
	if rep.Sent == 0 || rep.Sent != uint64(rec.n.Load()) {
		t.Fatalf("sent %d, received %d", rep.Sent, rec.n.Load())
	}
}

func TestRun_PacesToRate(t *testing.T) {
	rec, srv := newReceiver(t, nil)
	const rate, window = 200, time.Second
	start := time.Now()
	rep, err := Run(t.Context(), Config{URL: srv.URL + "/events", Rate: rate, Duration: window, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := rate * window.Seconds()
	if got := float64(rec.n.Load()); got < want*0.7 || got > want*1.3 {
		t.Fatalf("received %v requests in %v, want %v ± 30%%", got, window, want)
	}
	// Paced, not bursted: about half arrive in the first half.
	rec.mu.Lock()
	firstHalf := 0
	for _, at := range rec.at {
		if at.Sub(start) < window/2 {
			firstHalf++
		}
	}
	rec.mu.Unlock()
	if h := float64(firstHalf); h < want/2*0.7 || h > want/2*1.3 {
		t.Fatalf("%d requests in the first half of the window, want about %v", firstHalf, want/2)
	}
	if !rep.Latency.FromSchedule || rep.TargetRate != rate {
		t.Fatalf("report: from schedule %v, target %v", rep.Latency.FromSchedule, rep.TargetRate)
	}
}

func TestRun_CountsTimeoutsAndTransportErrors(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	rep, err := Run(t.Context(), Config{URL: slow.URL + "/events", Count: 3, Timeout: 30 * time.Millisecond})
	if !errors.Is(err, ErrRequestsFailed) || rep.Timeouts != 3 || rep.Failed() != 3 {
		t.Fatalf("error %v, timeouts %d, failed %d; want 3 timeouts", err, rep.Timeouts, rep.Failed())
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/events"
	l.Close()
	rep, err = Run(t.Context(), Config{URL: closed, Count: 2})
	if !errors.Is(err, ErrRequestsFailed) || rep.Errors != 2 || !strings.Contains(rep.FirstError, "refused") {
		t.Fatalf("error %v, transport errors %d (first %q); want 2 refused", err, rep.Errors, rep.FirstError)
	}
}

func TestRun_StopsWhenCanceled(t *testing.T) {
	_, srv := newReceiver(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	rep, err := Run(ctx, Config{URL: srv.URL + "/events", Rate: 100, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Interrupted || rep.Sent == 0 || rep.Duration > 2*time.Second {
		t.Fatalf("interrupted %v, sent %d, took %v", rep.Interrupted, rep.Sent, rep.Duration)
	}
}

func TestRun_SendsCredentials(t *testing.T) {
	rec, srv := newReceiver(t, nil)
	withUser := strings.Replace(srv.URL, "http://", "http://dove:s3cret@", 1) + "/events"
	rep, err := Run(t.Context(), Config{URL: withUser, Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rep.URL, "s3cret") {
		t.Errorf("report shows the password: %s", rep.URL)
	}
	if _, err := Run(t.Context(), Config{URL: srv.URL + "/events", Count: 1, Token: "tok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(t.Context(), Config{URL: srv.URL + "/events", Count: 1, BasicAuth: "a:b"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"Basic ZG92ZTpzM2NyZXQ=", "Basic ZG92ZTpzM2NyZXQ=", "Bearer tok", "Basic YTpi"}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if strings.Join(rec.auth, ",") != strings.Join(want, ",") {
		t.Errorf("Authorization headers %q, want %q", rec.auth, want)
	}
}

func TestRun_RefusesUnboundedRuns(t *testing.T) {
	_, err := Run(t.Context(), Config{URL: "http://127.0.0.1:1/events"})
	if err == nil || !strings.Contains(err.Error(), "unbounded") {
		t.Fatalf("error %v, want a refusal to run unbounded", err)
	}
}

func TestRun_RefusesRemoteURLs(t *testing.T) {
	_, err := Run(t.Context(), Config{URL: "http://192.0.2.1/events", Count: 1})
	if err == nil || !strings.Contains(err.Error(), "allow-remote") {
		t.Fatalf("error %v, want a refusal naming allow-remote", err)
	}
}

func TestCheckTarget(t *testing.T) {
	lookups := map[string][]netip.Addr{
		"ingest.local":  {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::1")},
		"mixed.example": {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.1.2.3")},
		"far.example":   {netip.MustParseAddr("2001:db8::1")},
	}
	old := lookupHost
	lookupHost = func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := lookups[host]; ok {
			return a, nil
		}
		return nil, errors.New("no such host")
	}
	t.Cleanup(func() { lookupHost = old })

	for _, tc := range []struct {
		url         string
		allowRemote bool
		ok          bool
	}{
		{"http://127.0.0.1:8080/events", false, true},
		{"http://127.9.8.7/events", false, true},
		{"http://[::1]:8080/events", false, true},
		{"http://localhost:8080/events", false, true},
		{"https://LOCALHOST/events", false, true},
		{"http://ingest.local/events", false, true},
		{"http://mixed.example/events", false, false},
		{"http://far.example/events", false, false},
		{"http://nowhere.example/events", false, false},
		{"http://10.0.0.1/events", false, false},
		{"http://[::ffff:10.0.0.1]/events", false, false},
		{"http://10.0.0.1/events", true, true},
		{"http://far.example/events", true, true},
		{"ftp://127.0.0.1/events", false, false},
		{"127.0.0.1:8080", false, false},
	} {
		_, _, err := checkTarget(t.Context(), tc.url, tc.allowRemote)
		if (err == nil) != tc.ok {
			t.Errorf("checkTarget(%q, allowRemote=%v): error %v, want ok=%v", tc.url, tc.allowRemote, err, tc.ok)
		}
	}
}

func TestConfig_RejectsBadSettings(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Count: 1, Concurrency: -1}, "concurrency"},
		{Config{Count: 1, Rate: -5}, "rate"},
		{Config{Count: 1, Concurrency: 10001}, "concurrency: 10001, want 1 to 10000"},
		{Config{Count: 1, Concurrency: math.MaxInt}, "concurrency"},
		{Config{Count: 1, Rate: math.NaN()}, "rate: NaN, want a finite number"},
		{Config{Count: 1, Rate: math.Inf(1)}, "rate: +Inf"},
		{Config{Count: 1, Rate: 2e9}, "rate: 2e+09, want at most 1e+09"},
		{Config{Duration: -time.Second}, "duration"},
		{Config{Count: 1, BasicAuth: "a:b", Token: "t"}, "not both"},
		{Config{Count: 1, BasicAuth: "nocolon"}, "user:password"},
		{Config{Count: 1, Version: "3.0"}, "version"},
	} {
		_, err := Run(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", tc.cfg, err, tc.want)
		}
	}
}

// BenchmarkRun measures a whole request against an in-process server (both
// share the CPU, so ns/op overstates loadgen's own cost).
func BenchmarkRun(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	b.ReportAllocs()
	b.ResetTimer()
	rep, err := Run(context.Background(), Config{URL: srv.URL + "/events", Count: uint64(b.N), Concurrency: 4})
	if err != nil || rep.OK != uint64(b.N) {
		b.Fatalf("ok %d of %d: %v", rep.OK, b.N, err)
	}
}

func TestRun_PacedRunThatFallsBehindStopsOnTime(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
	}))
	defer slow.Close()
	// A timeout longer than the run: the backlog is not dropped as timed
	// out but left behind when the window closes.
	rep, err := Run(t.Context(), Config{URL: slow.URL + "/events", Rate: 1000, Duration: 300 * time.Millisecond,
		Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Duration > time.Second || rep.Sent > 30 || rep.Behind != 300-rep.Sent {
		t.Fatalf("took %v, sent %d, behind %d; want about 300ms, about 15 sent, the other 285 behind", rep.Duration, rep.Sent, rep.Behind)
	}
	// Requests that waited for earlier slow answers count that wait.
	if rep.Latency.Max < 100*time.Millisecond {
		t.Fatalf("max latency %v, want the backlog's queueing delay in it", rep.Latency.Max)
	}
}

// A paced run whose receiver stalls leaves requests due inside the window
// unsent; their waits belong in the percentiles, or the stall is hidden
// (coordinated omission at the end of the run).
func TestRun_CountsTheBacklogLeftAtTheEndInTheLatencies(t *testing.T) {
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(400 * time.Millisecond):
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer stall.Close()
	// Request 0 is due at 0 and answered at 400 ms or later, after the
	// window closed; requests 1-29 were due at 10-290 ms and never sent,
	// so each waited over 110 ms.
	rep, err := Run(t.Context(), Config{URL: stall.URL + "/events", Rate: 100, Duration: 300 * time.Millisecond,
		Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l := rep.Latency
	if rep.Sent != 1 || rep.Behind != 29 || l.Unsent != 29 || l.Count != 30 {
		t.Fatalf("sent %d, behind %d, latency count %d (%d unsent); want 1 sent and 29 behind, all 30 counted",
			rep.Sent, rep.Behind, l.Count, l.Unsent)
	}
	if l.Min < 110*time.Millisecond || l.P50 < 110*time.Millisecond {
		t.Fatalf("min %v, p50 %v; the never-sent requests waited over 110 ms each", l.Min, l.P50)
	}
	var b strings.Builder
	rep.WriteText(&b)
	if !strings.Contains(b.String(), "1 answers + 29 never sent, counted at their wait") {
		t.Fatalf("the report does not say the backlog was counted:\n%s", b.String())
	}
}

// Dovecot's exporter times a request out counting from when the event was
// submitted, not from when the request was written: an event that waited
// behind a slow answer on the connection has that much less time.
func TestRun_TimeoutCountsFromTheDueTime(t *testing.T) {
	var n atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that a client that gives up ends the wait
		hold := 1900 * time.Millisecond
		if n.Add(1) == 1 {
			hold = 800 * time.Millisecond
		}
		select {
		case <-time.After(hold):
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer slow.Close()
	// Due at 0, 10 and 20 ms on one connection, a 2 s timeout. Request 0
	// is answered 800 ms after it was written, in time with 1.2 s to
	// spare. Request 1 cannot be written before 800 ms; answered 1.9 s
	// after that, within the timeout counted from its write, it would be
	// ok, but counted from its due time it times out at 2.01 s, some
	// 700 ms before any answer. Request 2 waits for request 1. (The
	// margins are wide so that a loaded machine, which delays both the
	// answers and the client's timers, does not change the outcome.)
	rep, err := Run(t.Context(), Config{URL: slow.URL + "/events", Rate: 100, Count: 3,
		Timeout: 2 * time.Second, AllowErrors: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 3 || rep.OK != 1 || rep.Timeouts != 2 {
		t.Fatalf("sent %d, ok %d, timeouts %d; want 1 ok and 2 timeouts (first error %q)", rep.Sent, rep.OK, rep.Timeouts, rep.FirstError)
	}
}

// The loopback check binds the addresses dialed: the connection goes to
// an address the check approved, not to whatever the name resolves to when
// dialing, while the Host header and TLS name stay the URL's.
func TestRun_DialsTheAddressTheLoopbackCheckApproved(t *testing.T) {
	var hosts []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	old := lookupHost
	lookupHost = func(_ context.Context, host string) ([]netip.Addr, error) {
		if host == "ingest.loadgen.invalid" {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return nil, errors.New("no such host")
	}
	t.Cleanup(func() { lookupHost = old })
	// The name does not exist outside the check's resolver: dialing it by
	// name fails.
	rep, err := Run(t.Context(), Config{URL: "http://ingest.loadgen.invalid:" + port + "/events", Count: 2})
	if err != nil || rep.OK != 2 {
		t.Fatalf("ok %d of 2: %v (first error %q)", rep.OK, err, rep.FirstError)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range hosts {
		if h != "ingest.loadgen.invalid:"+port {
			t.Fatalf("Host %q, want the URL's", h)
		}
	}
}

func TestCheckTarget_ApprovesTheAddressesToDial(t *testing.T) {
	old := lookupHost
	lookupHost = func(_ context.Context, host string) ([]netip.Addr, error) {
		// A resolver that would send "localhost" elsewhere.
		return []netip.Addr{netip.MustParseAddr("192.0.2.7")}, nil
	}
	t.Cleanup(func() { lookupHost = old })
	for _, tc := range []struct {
		url         string
		allowRemote bool
		want        []string
		tlsName     string
	}{
		{"http://localhost:8080/events", false, []string{"127.0.0.1:8080", "[::1]:8080"}, ""},
		{"https://LocalHost/events", false, []string{"127.0.0.1:443", "[::1]:443"}, "LocalHost"},
		{"http://127.0.0.3/events", false, []string{"127.0.0.3:80"}, ""},
		{"https://[::1]:9/events", false, []string{"[::1]:9"}, "::1"},
		{"http://localhost:8080/events", true, []string{"localhost:8080"}, ""},
		{"https://ingest.example/events", true, []string{"ingest.example:443"}, "ingest.example"},
	} {
		u, approved, err := checkTarget(t.Context(), tc.url, tc.allowRemote)
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
			continue
		}
		addrs, conf := dialTarget(u, approved)
		if !slices.Equal(addrs, tc.want) {
			t.Errorf("%s (allow-remote %v): dials %q, want %q", tc.url, tc.allowRemote, addrs, tc.want)
		}
		if conf != nil && conf.ServerName != tc.tlsName {
			t.Errorf("%s: TLS name %q, want %q", tc.url, conf.ServerName, tc.tlsName)
		}
	}
}

// At a rate so low that the next due time is beyond time.Duration's range,
// only the first request is due: converting the offset would wrap it into
// the past and send the rest at once.
func TestRun_ARateTooLowForTheScheduleSendsOnlyWhatIsDue(t *testing.T) {
	for _, cfg := range []Config{
		{Rate: 1e-10, Duration: 200 * time.Millisecond},
		{Rate: 1e-10, Count: 5},
	} {
		rec, srv := newReceiver(t, nil)
		cfg.URL = srv.URL + "/events"
		rep, err := Run(t.Context(), cfg)
		if err != nil || rec.n.Load() != 1 || rep.Sent != 1 || rep.Behind != 0 {
			t.Errorf("%+v: received %d, sent %d, behind %d: %v; want the one request due at the start", cfg, rec.n.Load(), rep.Sent, rep.Behind, err)
		}
	}
}

// A paced run reports as Behind only requests due inside its window that
// it did not send. At 100/s for 70 ms, seven are due (at 0 to 60 ms): the
// product 0.07 s × 100/s is 7.000000000000001 in floating point, whose
// ceiling is 8, but the eighth, due at 70 ms, is outside the window and
// no worker sends it. However many of the seven a loaded machine gets
// out, the sent and the behind make seven.
func TestRun_BehindCountsOnlyRequestsDueInTheWindow(t *testing.T) {
	_, srv := newReceiver(t, nil)
	rep, err := Run(t.Context(), Config{URL: srv.URL + "/events", Rate: 100, Duration: 70 * time.Millisecond,
		Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent+rep.Behind != 7 || rep.Latency.Unsent != rep.Behind {
		t.Fatalf("sent %d, behind %d (%d counted unsent); want 7 due in the window in all", rep.Sent, rep.Behind, rep.Latency.Unsent)
	}
}

// At a rate so low that the interval between due times is past float64's
// range (below some 5.6e-300/s), the first request is still due at the
// start: 0 × an infinite interval is NaN, which must not become its due
// time (a NaN converted to a time.Duration is 292 years in the past on
// amd64, so the request counted as timed out without being sent).
func TestRun_ARateWhoseIntervalOverflowsSendsTheFirstRequest(t *testing.T) {
	for _, cfg := range []Config{
		{Rate: 1e-305, Count: 3},
		{Rate: 1e-305, Duration: 200 * time.Millisecond},
	} {
		rec, srv := newReceiver(t, nil)
		cfg.URL = srv.URL + "/events"
		rep, err := Run(t.Context(), cfg)
		if err != nil || rec.n.Load() != 1 || rep.Sent != 1 || rep.OK != 1 || rep.Behind != 0 {
			t.Errorf("%+v: received %d, sent %d, ok %d, behind %d: %v (first error %q); want the one request due at the start",
				cfg, rec.n.Load(), rep.Sent, rep.OK, rep.Behind, err, rep.FirstError)
		}
	}
}
