package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	brokerconfig "github.com/dovewarden/dovewarden-knative/config/broker"
	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
)

// Subscriber names the collector answers to: alerts is the ref of the
// shipped replication-failed-alert Trigger (and the dead-letter sink);
// audit is the ref of an extra Trigger the suite adds for succeeded events.
const (
	alertsRef = "dovewarden-alerts"
	auditRef  = "dovewarden-audit"
)

// auditTrigger routes every replication.succeeded to the collector, so
// the latency benchmark knows each dsync's own duration.
const auditTrigger = `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: e2e-replication-succeeded-audit
spec:
  broker: dovewarden
  filter:
    attributes:
      type: org.dovewarden.replication.succeeded
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: ` + auditRef + `
`

// collector is an HTTP subscriber on 127.0.0.1 that keeps every
// CloudEvent the broker delivers to it (alerting and audit webhooks).
type collector struct {
	t   testing.TB
	url string
	mu  sync.Mutex
	evs []cloudevents.Event
}

func newCollector(t testing.TB) *collector {
	c := &collector{t: t}
	ln := freeAddr(t)
	c.url = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(c.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return c
}

func (c *collector) serve(w http.ResponseWriter, r *http.Request) {
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.evs = append(c.evs, *ev)
	c.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// subscribers are the broker flags that point the alerting and audit
// Triggers at the collector.
func (c *collector) subscribers() []string {
	return []string{"--subscriber", alertsRef + "=" + c.url + "/alerts", "--subscriber", auditRef + "=" + c.url + "/audit"}
}

// triggers writes the shipped Trigger manifests plus the audit Trigger
// into a folder under dir and returns it.
func (c *collector) triggers(dir string) string {
	out := filepath.Join(dir, "triggers")
	if err := os.MkdirAll(out, 0o755); err != nil {
		c.t.Fatal(err)
	}
	err := fs.WalkDir(brokerconfig.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(brokerconfig.FS, path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(out, path), b, 0o644)
	})
	if err == nil {
		err = os.WriteFile(filepath.Join(out, "e2e-audit.yaml"), []byte(auditTrigger), 0o644)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// result is the data of a replication.succeeded or .failed event.
type result struct {
	User       string    `json:"user"`
	Host       string    `json:"host"`
	Class      string    `json:"class"`
	RetryBy    string    `json:"retry_by"`
	Start      time.Time `json:"start"`
	End        time.Time `json:"end"`
	DurationMS int64     `json:"duration_ms"`
	Coalesced  int       `json:"coalesced"`
	Mode       string    `json:"mode"`

	// RetryByExt is the event's retryby extension, as the Broker
	// delivered it.
	RetryByExt string `json:"-"`
}

// results returns the data of the collected events of type typ.
func (c *collector) results(typ string) []result {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []result
	for _, ev := range c.evs {
		if ev.Type() != typ {
			continue
		}
		var r result
		if err := json.Unmarshal(ev.Data(), &r); err != nil {
			c.t.Errorf("%s event %s: bad data: %v", typ, ev.ID(), err)
			continue
		}
		r.RetryByExt, _ = ev.Extensions()[contract.ExtRetryBy].(string)
		out = append(out, r)
	}
	return out
}

// awaitResult waits until the collector got a replication result for user
// of a dsync that ended after since.
func (s *system) awaitResult(user string, since time.Time) {
	s.t.Helper()
	err := poll(s.ctx, convergeLimit, 5*time.Millisecond, func() error {
		for _, r := range s.events.results("org.dovewarden.replication.succeeded") {
			if r.User == user && r.End.After(since) {
				return nil
			}
		}
		// A failed attempt that sync retries itself is not the end.
		for _, r := range s.events.results("org.dovewarden.replication.failed") {
			if r.User == user && r.End.After(since) && r.RetryBy != "sync" {
				return nil
			}
		}
		return errNotYet("a replication result for " + user)
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

// requestSweep asks for a sweep with `dovewarden sweep`, as an admin or
// the shipped PingSource (on its schedule) would; extra are more flags of
// the command (--all).
func (s *system) requestSweep(extra ...string) {
	s.t.Helper()
	if err := s.trySweep(extra...); err != nil {
		s.t.Fatal(err)
	}
}

// trySweep runs `dovewarden sweep --broker-url ...` with extra flags; safe
// to call from any goroutine.
func (s *system) trySweep(extra ...string) error {
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	args := []string{"sweep", "--broker-url", s.brokerURL, "--reason", "e2e", "--source", "e2e/pingsource"}
	args = append(args, extra...)
	if s.cfg.tls {
		args = append(args, "--tls-ca-file", suiteCA.File)
	}
	cmd := exec.CommandContext(ctx, dovewardenBin, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dovewarden sweep: %w: %s", err, out)
	}
	return nil
}

// metric sums the samples of a Prometheus metric at base+"/metrics" whose
// label set contains every one of labels (e.g. `reason="malformed"`).
func metric(t testing.TB, base, name string, labels ...string) float64 {
	t.Helper()
	resp, err := httpClient.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", base, err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue // a longer metric name with this prefix
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// startRedis runs a redis-server of its own on the reserved port, so the
// test can restart it on the same address. Like a fresh server after a
// crash without persistence, a restarted one has lost every key.
func (s *system) startRedis() {
	bin, err := redistest.Ensure()
	if err != nil {
		s.t.Fatalf("redis-server: %v", err)
	}
	_, port, _ := strings.Cut(s.redisAddr, ":")
	dir := filepath.Join(s.dir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	s.redis = newProc(s.t, s.dir, "redis-server", bin, []string{"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--loglevel", "notice"}, nil)
	s.redis.start()
	s.awaitRedis()
}

// awaitRedis waits until redis-server accepts connections.
func (s *system) awaitRedis() {
	s.t.Helper()
	err := poll(s.ctx, 10*time.Second, 10*time.Millisecond, func() error {
		s.redis.checkAlive()
		c, err := net.DialTimeout("tcp", s.redisAddr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "+PONG") {
			return fmt.Errorf("PING: %q %v", line, err)
		}
		return nil
	})
	if err != nil {
		s.t.Fatalf("redis-server at %s: %v", s.redisAddr, err)
	}
}

// checkOneDsyncAtATime checks invariant 2 on everything the scenario did:
// no two dsyncs of a user overlap, by the start and end of each dsync that
// a replication.succeeded or .failed event reports (the same event reaching
// two Triggers counts once). Starts are Redis's milliseconds and a failed
// attempt's end the process's clock: a millisecond of slack between them.
func (s *system) checkOneDsyncAtATime() {
	type span struct{ start, end time.Time }
	byUser := map[string][]span{}
	seen := map[string]bool{}
	for _, typ := range []string{contract.TypeReplicationSucceeded, contract.TypeReplicationFailed} {
		for _, r := range s.events.results(typ) {
			key := r.User + " " + r.Start.String() + " " + r.End.String()
			if r.Start.IsZero() || r.End.IsZero() || seen[key] {
				continue
			}
			seen[key] = true
			byUser[r.User] = append(byUser[r.User], span{r.Start, r.End})
		}
	}
	for user, spans := range byUser {
		sort.Slice(spans, func(i, j int) bool { return spans[i].start.Before(spans[j].start) })
		for i := 1; i < len(spans); i++ {
			if prev := spans[i-1]; spans[i].start.Add(time.Millisecond).Before(prev.end) {
				s.t.Errorf("invariant 2: two dsyncs of %s at once: one from %s to %s, the next from %s",
					user, prev.start.Format(time.StampMicro), prev.end.Format(time.StampMicro), spans[i].start.Format(time.StampMicro))
			}
		}
	}
}
