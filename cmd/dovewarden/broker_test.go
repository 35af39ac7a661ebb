package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// startBroker runs "dovewarden broker" with args until the test ends and
// returns its base URL.
func startBroker(t *testing.T, vars map[string]string, args ...string) (string, *safebuf.Buffer) {
	t.Helper()
	env, _, stderr := testEnv(vars, "")
	base, stop := serve(t, env, stderr, append([]string{"broker", "--listen", "127.0.0.1:0"}, args...)...)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("broker returned %v", err)
		}
	})
	return base, stderr
}

func postEvent(t *testing.T, url, id, typ, priority string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(`{"user":"u1"}`))
	req.Header.Set("Ce-Specversion", "1.0")
	req.Header.Set("Ce-Id", id)
	req.Header.Set("Ce-Source", "mail-a.test")
	req.Header.Set("Ce-Type", typ)
	req.Header.Set("Ce-Subject", "u1")
	req.Header.Set("Ce-Priority", priority)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBroker_RoutesToHTTPSubscribers runs the broker process with the
// embedded manifests and the sync lanes mapped to an HTTP subscriber.
func TestBroker_RoutesToHTTPSubscribers(t *testing.T) {
	got := make(chan string, 10)
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.URL.Path + " " + r.Header.Get("Ce-Id")
		w.WriteHeader(http.StatusAccepted)
	}))
	defer sub.Close()
	base, stderr := startBroker(t, map[string]string{
		// One variable holds several mappings, comma-separated.
		"DOVEWARDEN_SUBSCRIBER": "dovewarden-sync-low=" + sub.URL + "/low, dovewarden-sync-high=" + sub.URL + "/high",
		"DOVEWARDEN_LOG_FORMAT": "json",
	})
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	if code := postEvent(t, base+"/", "e1", "org.dovewarden.mailbox.changed", "high"); code != http.StatusAccepted {
		t.Fatalf("POST: %d", code)
	}
	if code := postEvent(t, base+"/default/dovewarden", "e2", "org.dovewarden.mailbox.changed", "low"); code != http.StatusAccepted {
		t.Fatalf("POST: %d", code)
	}
	want := map[string]bool{"/high e1": true, "/low e2": true}
	for range want {
		select {
		case g := <-got:
			if !want[g] {
				t.Errorf("subscriber got %q", g)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no delivery")
		}
	}
	// The subscriber has the event before the broker has its answer: the
	// delivery is counted a moment later.
	if m, ok := awaitMetric(t, base, `dovewarden_broker_deliveries_total{outcome="success",trigger="sync-high"} 1`); !ok {
		t.Errorf("metrics lack the delivery:\n%s", m)
	}
	// The alert Trigger has no subscriber here: disabled, with a warning.
	if !strings.Contains(stderr.String(), `"trigger":"replication-failed-alert"`) {
		t.Errorf("no warning about the disabled Trigger:\n%s", stderr)
	}
}

func TestBroker_TriggersFolder(t *testing.T) {
	got := make(chan string, 1)
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Ce-Type")
	}))
	defer sub.Close()
	dir := t.TempDir()
	manifest := "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: all\nspec:\n  broker: default\n  subscriber:\n    uri: " + sub.URL + "\n"
	if err := os.WriteFile(filepath.Join(dir, "t.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	base, _ := startBroker(t, nil, "--triggers", dir)
	if code := postEvent(t, base+"/default/default", "e1", "com.example.any", ""); code != http.StatusAccepted {
		t.Fatalf("POST: %d", code)
	}
	select {
	case g := <-got:
		if g != "com.example.any" {
			t.Errorf("got %q", g)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery")
	}
}

func TestBroker_ConfigErrorsNameTheSetting(t *testing.T) {
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "t.yaml"), []byte("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:1/\n  delivery:\n    backoffDelay: soon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		vars map[string]string
		args []string
		want string
	}{
		"no folder":       {nil, []string{"--triggers", "/nonexistent"}, "triggers"},
		"bad manifest":    {nil, []string{"--triggers", bad}, "Trigger t: spec.delivery: backoffDelay"},
		"bad subscriber":  {nil, []string{"--subscriber", "http://u:s3cret@x/"}, "NAME=URL"},
		"bad sub env":     {map[string]string{"DOVEWARDEN_SUBSCRIBER": "a=ftp://u:s3cret@x"}, nil, "subscriber a="},
		"bad queue size":  {nil, []string{"--queue-size", "0"}, "queue-size"},
		"bad queue bytes": {nil, []string{"--queue-bytes", "1000"}, "queue-bytes"},
		"bad workers":     {map[string]string{"DOVEWARDEN_WORKERS": "-1"}, nil, "workers"},
		"bad timeout":     {nil, []string{"--delivery-timeout", "0s"}, "delivery-timeout"},
		"timeout of 1ns":  {nil, []string{"--delivery-timeout", "1ns"}, "delivery-timeout 1ns: want at least 1s"},
		"bad spool file":  {nil, []string{"--spool-file", filepath.Join(bad, "missing", "spool")}, "spool-file"},
		"bad listen":      {nil, []string{"--listen", "8081"}, "listen"},
		"stray argument":  {nil, []string{"extra"}, "unexpected argument"},
		// The shipped Triggers, with a sync lane's subscriber forgotten:
		// its changes would be accepted and go nowhere.
		"no subscriber": {nil, nil, "--subscriber dovewarden-sync-high=URL"},
		"low unmapped":  {map[string]string{"DOVEWARDEN_SUBSCRIBER": "dovewarden-sync-high=http://127.0.0.1:1/"}, nil, "--subscriber dovewarden-sync-low=URL"},
	} {
		t.Run(name, func(t *testing.T) {
			env, _, _ := testEnv(tc.vars, "")
			err := run(context.Background(), env, append([]string{"broker"}, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %v shows a password", err)
			}
		})
	}
}

// stuckSubscriber is a subscriber of both sync lanes that holds every
// event until the broker gives up on it (its id sent on inFlight, if
// there is room) while stuck is set, and then takes them (their ids on
// got); vars are a broker's settings for it, with one worker a lane, a
// spool file and a short shutdown timeout.
func stuckSubscriber(t *testing.T) (stuck *atomic.Bool, inFlight, got chan string, vars map[string]string) {
	stuck, inFlight, got = new(atomic.Bool), make(chan string, 10), make(chan string, 100)
	stuck.Store(true)
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server sees the client go
		if stuck.Load() {
			select {
			case inFlight <- r.Header.Get("Ce-Id"):
			default:
			}
			<-r.Context().Done() // until the broker gives up on it
			return
		}
		got <- r.Header.Get("Ce-Id")
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(sub.Close)
	return stuck, inFlight, got, map[string]string{
		"DOVEWARDEN_SUBSCRIBER":       "dovewarden-sync-low=" + sub.URL + ",dovewarden-sync-high=" + sub.URL,
		"DOVEWARDEN_SPOOL_FILE":       filepath.Join(t.TempDir(), "broker.spool"),
		"DOVEWARDEN_WORKERS":          "1",
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "300ms",
	}
}

// TestBroker_SpoolFileCarriesHeldEventsOverARestart: the broker process is
// stopped with events queued in both sync lanes and one delivery of each
// in flight; with --spool-file, the next start delivers each of them once,
// and a stop that holds nothing leaves no file behind.
func TestBroker_SpoolFileCarriesHeldEventsOverARestart(t *testing.T) {
	stuck, inFlight, got, vars := stuckSubscriber(t)
	spool := vars["DOVEWARDEN_SPOOL_FILE"]
	env, _, stderr := testEnv(vars, "")
	base, stop := serve(t, env, stderr, "broker", "--listen", "127.0.0.1:0")
	want := map[string]bool{}
	for i := range 10 {
		id, priority := "e"+strconv.Itoa(i), []string{"high", "low"}[i%2]
		if code := postEvent(t, base+"/", id, "org.dovewarden.mailbox.changed", priority); code != http.StatusAccepted {
			t.Fatalf("POST %s: %d", id, code)
		}
		want[id] = true
	}
	for range 2 {
		select {
		case <-inFlight:
		case <-time.After(5 * time.Second):
			t.Fatal("no delivery in flight")
		}
	}
	// The deliveries in flight are cancelled at the shutdown timeout and
	// handed back: a clean stop, which the log tells of.
	if err := stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if !strings.Contains(stderr.String(), "cancelled and handed back") {
		t.Errorf("the log does not tell of the cancelled deliveries:\n%s", stderr)
	}
	if _, err := os.Stat(spool); err != nil {
		t.Fatalf("no spool file after the stop: %v\n%s", err, stderr)
	}

	stuck.Store(false)
	env2, _, stderr2 := testEnv(vars, "")
	base2, stop2 := serve(t, env2, stderr2, "broker", "--listen", "127.0.0.1:0")
	for n := len(want); n > 0; n-- {
		select {
		case id := <-got:
			if !want[id] {
				t.Errorf("delivered %s twice, or one never published", id)
			}
			delete(want, id)
		case <-time.After(5 * time.Second):
			t.Fatalf("not delivered after the restart: %v\n%s", want, stderr2)
		}
	}
	if _, err := os.Stat(spool); !os.IsNotExist(err) {
		t.Errorf("spool file left: %v", err)
	}
	if m, ok := awaitMetric(t, base2, `dovewarden_broker_spool_events_total{outcome="restored"} 10`); !ok {
		t.Errorf("metrics lack the restored events:\n%s", m)
	}
	if err := stop2(); err != nil {
		t.Errorf("second stop: %v", err)
	}
	if _, err := os.Stat(spool); !os.IsNotExist(err) {
		t.Errorf("a stop that held nothing left a spool file: %v", err)
	}
	select {
	case id := <-got:
		t.Errorf("%s delivered again", id)
	default:
	}
}

// TestBroker_StopIsOneShutdownTimeout: a client that stalls sending its
// body holds the listener's stop for the whole --shutdown-timeout; the
// lanes' deliveries in flight must be handed back within that same time,
// not another one after it, so that a stop (and the spool file) fits in a
// service manager's stop timeout.
func TestBroker_StopIsOneShutdownTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	inFlight := make(chan struct{}, 1)
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		inFlight <- struct{}{}
		<-r.Context().Done()
	}))
	defer sub.Close()
	spool := filepath.Join(t.TempDir(), "broker.spool")
	env, _, stderr := testEnv(map[string]string{
		"DOVEWARDEN_SUBSCRIBER":       "dovewarden-sync-low=" + sub.URL + ",dovewarden-sync-high=" + sub.URL,
		"DOVEWARDEN_SPOOL_FILE":       spool,
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": timeout.String(),
	}, "")
	base, stop := serve(t, env, stderr, "broker", "--listen", "127.0.0.1:0")
	if code := postEvent(t, base+"/", "e1", "org.dovewarden.mailbox.changed", "high"); code != http.StatusAccepted {
		t.Fatalf("POST: %d", code)
	}
	select {
	case <-inFlight:
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery in flight")
	}
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nCe-Specversion: 1.0\r\n"+
		"Ce-Id: e2\r\nCe-Source: s\r\nCe-Type: org.dovewarden.mailbox.changed\r\n\r\n{")
	time.Sleep(100 * time.Millisecond) // the request has begun
	began := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, stderr)
	}
	if took := time.Since(began); took > timeout*7/4 {
		t.Errorf("the stop took %v with --shutdown-timeout %v: the lanes waited for the listener first\n%s", took, timeout, stderr)
	}
	if _, err := os.Stat(spool); err != nil {
		t.Errorf("the delivery handed back was not spooled: %v\n%s", err, stderr)
	}
}

// TestBroker_SecondProcessOnTheSameSpoolFileIsRefused: a second broker
// (or local) process given the spool file another running process uses
// would replace, at its stop, what the first saved there at its own (or
// remove it, holding nothing): the first's held events would be lost. Its
// start is refused instead, naming --spool-file, and the first process's
// events are delivered after its restart.
func TestBroker_SecondProcessOnTheSameSpoolFileIsRefused(t *testing.T) {
	stuck, _, got, vars := stuckSubscriber(t)
	spool := vars["DOVEWARDEN_SPOOL_FILE"]
	env, _, stderr := testEnv(vars, "")
	base, stop := serve(t, env, stderr, "broker", "--listen", "127.0.0.1:0")
	for _, id := range []string{"e1", "e2", "e3"} {
		if code := postEvent(t, base+"/", id, "org.dovewarden.mailbox.changed", "high"); code != http.StatusAccepted {
			t.Fatalf("POST %s: %d", id, code)
		}
	}

	// The second process, on another port and the same spool file.
	env2, _, stderr2 := testEnv(vars, "")
	ready := make(chan struct{})
	env2.ready = func(net.Addr) { close(ready) }
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan error, 1)
	go func() { done2 <- run(ctx2, env2, []string{"broker", "--listen", "127.0.0.1:0"}) }()
	var err2 error
	select {
	case err2 = <-done2:
	case <-ready:
		// It runs: it stops after the first, holding nothing.
		if err := stop(); err != nil {
			t.Fatalf("first stop: %v\n%s", err, stderr)
		}
		cancel2()
		<-done2
		if _, err := os.Stat(spool); err != nil {
			t.Fatalf("a second process ran on the spool file of the first, and its stop removed what the first saved there: %v\nfirst:\n%s\nsecond:\n%s",
				err, stderr, stderr2)
		}
		t.Fatalf("a second process ran on the spool file of the first\nsecond:\n%s", stderr2)
	case <-time.After(15 * time.Second):
		t.Fatal("the second process neither started nor exited")
	}
	if err2 == nil || !strings.Contains(err2.Error(), "spool-file") {
		t.Fatalf("second process on the same spool file: %v, want an error naming spool-file\n%s", err2, stderr2)
	}
	if err := stop(); err != nil {
		t.Fatalf("first stop: %v\n%s", err, stderr)
	}

	stuck.Store(false)
	env3, _, stderr3 := testEnv(vars, "")
	_, stop3 := serve(t, env3, stderr3, "broker", "--listen", "127.0.0.1:0")
	want := map[string]bool{"e1": true, "e2": true, "e3": true}
	for len(want) > 0 {
		select {
		case id := <-got:
			delete(want, id)
		case <-time.After(5 * time.Second):
			t.Fatalf("not delivered after the restart: %v\n%s", want, stderr3)
		}
	}
	if err := stop3(); err != nil {
		t.Errorf("third stop: %v", err)
	}
}
