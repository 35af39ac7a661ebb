package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// limited serves h with a bound of max connections on a loopback port
// until stop, and returns the address, the registry of its metrics and
// the log.
func limited(t *testing.T, max int, h http.Handler) (addr string, reg *prometheus.Registry, logs *safebuf.Buffer, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg = prometheus.NewRegistry()
	logs = &safebuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	o := Options{ShutdownTimeout: 200 * time.Millisecond, MaxConnections: max, Metrics: reg}
	go func() {
		done <- ServeListener(ctx, slog.New(slog.NewTextHandler(logs, nil)), o, ln, h, func(net.Addr) { close(ready) })
	}()
	<-ready
	var stopped bool
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { stop() })
	return ln.Addr().String(), reg, logs, stop
}

// metricValue is the value of the metric name in reg, of its series with
// the label state when given.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, state ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(state) > 0 && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != state[0]) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s %v", name, state)
	return 0
}

// open is the number of connections reg's server holds open.
func open(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	var n float64
	for _, s := range []string{"new", "active", "idle"} {
		n += metricValue(t, reg, "dovewarden_http_connections", s)
	}
	return n
}

// keepAlive is a client connection that sends one request at a time and
// keeps the connection open between them, as Dovecot's exporter does.
type keepAlive struct {
	net.Conn
	r *bufio.Reader
}

func dialKeepAlive(t *testing.T, addr string) *keepAlive {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &keepAlive{Conn: c, r: bufio.NewReader(c)}
}

// get sends GET path and reads the answer's status and body.
func (k *keepAlive) get(path string) (int, string, error) {
	k.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(k, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestConnLimit_ClosesTheLongestIdleForANewConnection: at the bound, a
// new connection is served at once, in the place of the keep-alive
// connection that has waited longest for its next request; the others
// keep theirs.
func TestConnLimit_ClosesTheLongestIdleForANewConnection(t *testing.T) {
	addr, reg, _, _ := limited(t, 3, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }))
	var conns []*keepAlive
	for i := range 3 {
		k := dialKeepAlive(t, addr)
		if code, body, err := k.get(fmt.Sprintf("/c%d", i)); err != nil || code != 200 || body != fmt.Sprintf("/c%d", i) {
			t.Fatalf("connection %d: %d %q %v", i, code, body, err)
		}
		conns = append(conns, k)
	}
	idle3 := func() bool { return metricValue(t, reg, "dovewarden_http_connections", "idle") == 3 }
	waitFor(t, "three idle connections", idle3)
	// c1 and c2 send again: c0 is now the one idle the longest.
	for _, k := range conns[1:] {
		if code, _, err := k.get("/again"); err != nil || code != 200 {
			t.Fatalf("again: %d %v", code, err)
		}
	}
	waitFor(t, "three idle connections again", idle3)

	k := dialKeepAlive(t, addr)
	if code, body, err := k.get("/new"); err != nil || code != 200 || body != "/new" {
		t.Fatalf("a new connection at the bound: %d %q %v", code, body, err)
	}
	if _, _, err := conns[0].get("/c0"); err == nil {
		t.Error("the connection idle the longest still answers")
	}
	for i, k := range conns[1:] {
		if code, _, err := k.get("/still"); err != nil || code != 200 {
			t.Errorf("connection %d, idle for less long: %d %v", i+1, code, err)
		}
	}
	if v := metricValue(t, reg, "dovewarden_http_connections_closed_for_new_total", "idle"); v != 1 {
		t.Errorf("idle connections closed: %v, want 1", v)
	}
	if v := metricValue(t, reg, "dovewarden_http_connections_waited_total"); v != 0 {
		t.Errorf("connections that waited: %v, want 0", v)
	}
	if v := open(t, reg); v != 3 {
		t.Errorf("open connections: %v, want 3", v)
	}
	if v := metricValue(t, reg, "dovewarden_http_max_connections"); v != 3 {
		t.Errorf("bound: %v, want 3", v)
	}
}

// TestConnLimit_WaitsWhileEveryConnectionIsBusy: with every connection
// busy with a request, a new one is not served until one of them ends;
// it is counted and logged, and then served.
func TestConnLimit_WaitsWhileEveryConnectionIsBusy(t *testing.T) {
	release := make(chan struct{})
	var entered atomic.Int32
	addr, reg, logs, _ := limited(t, 2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, r.URL.Path)
	}))
	type answer struct {
		code int
		err  error
	}
	send := func(path string) chan answer {
		k := dialKeepAlive(t, addr)
		ch := make(chan answer, 1)
		go func() {
			code, _, err := k.get(path)
			ch <- answer{code, err}
		}()
		return ch
	}
	slow1, slow2 := send("/slow"), send("/slow")
	waitFor(t, "two requests in their handlers", func() bool { return entered.Load() == 2 })
	third := send("/fast")
	waitFor(t, "the third connection to wait", func() bool {
		return metricValue(t, reg, "dovewarden_http_connections_waited_total") == 1
	})
	// It waits before it is served: no handler has seen it.
	if n := entered.Load(); n != 2 {
		t.Fatalf("handlers entered: %d, want 2 while the third connection waits", n)
	}
	if !strings.Contains(logs.String(), "every connection is busy") || !strings.Contains(logs.String(), "setting=max-connections") {
		t.Errorf("no warning naming the setting:\n%s", logs)
	}
	release <- struct{}{}
	var a answer
	select {
	case a = <-slow1:
	case a = <-slow2:
		slow2 = slow1
	}
	if a.err != nil || a.code != 200 {
		t.Fatalf("released request: %+v", a)
	}
	// The released connection is idle now: the third closes it and is
	// served.
	if a := <-third; a.err != nil || a.code != 200 {
		t.Fatalf("the waiting connection: %+v", a)
	}
	close(release)
	if a := <-slow2; a.err != nil || a.code != 200 {
		t.Errorf("the other slow request: %+v", a)
	}
}

// TestConnLimit_AStopEndsTheWait: a connection waiting for a place does
// not hold the stop; it is closed without an answer.
func TestConnLimit_AStopEndsTheWait(t *testing.T) {
	addr, reg, _, stop := limited(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	busy := dialKeepAlive(t, addr)
	fmt.Fprintf(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the busy connection", func() bool { return metricValue(t, reg, "dovewarden_http_connections", "active") == 1 })
	waiting := dialKeepAlive(t, addr)
	fmt.Fprintf(waiting, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the second connection to wait", func() bool {
		return metricValue(t, reg, "dovewarden_http_connections_waited_total") == 1
	})
	errc := make(chan error, 1)
	go func() { errc <- stop() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the stop waits for the waiting connection")
	}
	waiting.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(waiting.r, nil); err == nil {
		t.Errorf("the waiting connection got an answer: %s", resp.Status)
	}
	busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(busy.r, nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("the busy request at the stop: %v %v, want its handler's 503", resp, err)
	}
}

// TestConnLimit_ARequestBegunIsNotIdle: net/http calls a keep-alive
// connection idle until its next request's headers are in. One whose
// request has begun to arrive is not closed for a new connection; the
// one truly idle is, though it has been idle for less long.
func TestConnLimit_ARequestBegunIsNotIdle(t *testing.T) {
	addr, reg, _, _ := limited(t, 2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }))
	a, b := dialKeepAlive(t, addr), dialKeepAlive(t, addr)
	for i, k := range []*keepAlive{a, b} {
		if code, _, err := k.get("/first"); err != nil || code != 200 {
			t.Fatalf("first request: %d %v", code, err)
		}
		waitFor(t, "the connection to turn idle", func() bool {
			return metricValue(t, reg, "dovewarden_http_connections", "idle") == float64(i+1)
		})
	}
	// a, idle the longest, begins its next request.
	a.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(a, "GET /second HTTP/1.1\r\nHost: x\r\n")
	// Time for the server to read them; before that a is idle indeed,
	// and the test would fail, not pass, cutting its request.
	time.Sleep(200 * time.Millisecond)
	if v := metricValue(t, reg, "dovewarden_http_connections", "idle"); v != 2 {
		t.Fatalf("idle connections to net/http: %v, want 2 (a's headers are not all in)", v)
	}
	if code, body, err := dialKeepAlive(t, addr).get("/new"); err != nil || code != 200 || body != "/new" {
		t.Fatalf("a new connection: %d %q %v", code, body, err)
	}
	fmt.Fprintf(a, "\r\n")
	resp, err := http.ReadResponse(a.r, nil)
	if err != nil {
		t.Fatalf("the request begun was cut off: %v", err)
	}
	resp.Body.Close()
	if _, _, err := b.get("/again"); err == nil {
		t.Error("the connection truly idle still answers")
	}
}

// TestConnLimit_ClosesAQuietNewConnection: with none idle, a connection
// that has sent nothing for a second gives its place to a new one.
func TestConnLimit_ClosesAQuietNewConnection(t *testing.T) {
	addr, reg, _, _ := limited(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }))
	silent := dialKeepAlive(t, addr)
	waitFor(t, "the silent connection", func() bool { return metricValue(t, reg, "dovewarden_http_connections", "new") == 1 })
	if code, body, err := dialKeepAlive(t, addr).get("/new"); err != nil || code != 200 || body != "/new" {
		t.Fatalf("a new connection: %d %q %v", code, body, err)
	}
	if v := metricValue(t, reg, "dovewarden_http_connections_closed_for_new_total", "new"); v != 1 {
		t.Errorf("new connections closed for a newer one: %v, want 1", v)
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := silent.Read(make([]byte, 1)); err == nil {
		t.Errorf("the silent connection is still open (read %d bytes)", n)
	}
}

// TestConnLimit_ANextRequestStalledInItsFirstBytesIsIdle: net/http waits
// for the first 4 bytes of a keep-alive connection's next request under
// the idle timeout (120 s), not the read-header timeout. A client that
// sends fewer and stalls is not beginning a request for long: past the
// read-header timeout since its last byte, the connection is closed for a
// new one, as an idle one is, rather than holding its place for two
// minutes while new connections wait.
func TestConnLimit_ANextRequestStalledInItsFirstBytesIsIdle(t *testing.T) {
	addr, reg, _, _ := limited(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }))
	stalled := dialKeepAlive(t, addr)
	if code, _, err := stalled.get("/first"); err != nil || code != 200 {
		t.Fatalf("first request: %d %v", code, err)
	}
	waitFor(t, "the connection to turn idle", func() bool {
		return metricValue(t, reg, "dovewarden_http_connections", "idle") == 1
	})
	if _, err := io.WriteString(stalled, "GE"); err != nil {
		t.Fatal(err)
	}
	// The new connection waits until the stalled one counts as idle;
	// without that, until the idle timeout, long after this deadline.
	next := dialKeepAlive(t, addr)
	next.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(next, "GET /new HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(next.r, nil)
	if err != nil {
		t.Fatalf("the new connection was not served: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "/new" {
		t.Errorf("the new connection: %d %q", resp.StatusCode, body)
	}
	if v := metricValue(t, reg, "dovewarden_http_connections_closed_for_new_total", "idle"); v != 1 {
		t.Errorf("idle connections closed for a new one: %v, want 1", v)
	}
	stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := stalled.Read(make([]byte, 1)); err == nil {
		t.Errorf("the stalled connection is still open (read %d bytes)", n)
	}
}
