package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// TestMetrics_RedisGoneDropsOnlyItsSeries: with the Redis server stopped,
// a role's /metrics still answers 200 with every metric that does not
// read Redis at scrape time; only the Redis-backed gauges (pending and
// failing users, the sweep's progress) are left out, and the failure is
// counted (promhttp_metric_handler_errors_total{cause="gathering"}) and
// logged.
func TestMetrics_RedisGoneDropsOnlyItsSeries(t *testing.T) {
	for _, role := range []string{"local", "ingest"} {
		t.Run(role, func(t *testing.T) {
			srv := redistest.Start(t)
			var base string
			var logs interface{ String() string }
			switch role {
			case "local":
				fake := doveadmtest.NewServer(t, "mail-a.test", nil)
				b, _, stderr := startLocalWith(t, fake, "--redis-url", srv.URL(), "--sweep-every", "0")
				base, logs = b, stderr
			case "ingest":
				env, _, stderr := testEnv(nil, "")
				base, _ = serve(t, env, stderr, "ingest", "--listen", "127.0.0.1:0",
					"--broker-url", "http://127.0.0.1:1", "--redis-url", srv.URL())
				logs = stderr
			}
			scrape := func() (int, string) {
				t.Helper()
				c := http.Client{Timeout: 10 * time.Second}
				resp, err := c.Get(base + "/metrics")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			if code, body := scrape(); code != http.StatusOK || !strings.Contains(body, "dovewarden_sync_pending_users ") {
				t.Fatalf("with Redis up: %d\n%s", code, body)
			}
			srv.Stop()
			code, body := scrape()
			if code != http.StatusOK {
				t.Fatalf("with Redis gone: %d, want 200\n%s", code, body)
			}
			for _, want := range []string{"go_goroutines ", "process_start_time_seconds ", "dovewarden_ingest_send_duration_seconds_count ",
				`promhttp_metric_handler_errors_total{cause="gathering"} `} {
				if !strings.Contains(body, want) {
					t.Errorf("with Redis gone, no %q in /metrics", want)
				}
			}
			// The counter goes up after the scrape that failed: the next
			// one shows it.
			if _, next := scrape(); strings.Contains(next, `promhttp_metric_handler_errors_total{cause="gathering"} 0`) {
				t.Errorf("the failed gathering is not counted")
			}
			for _, gone := range []string{"dovewarden_sync_pending_users ", "dovewarden_sweep_running "} {
				if strings.Contains(body, gone) {
					t.Errorf("with Redis gone, %q is still served", gone)
				}
			}
			if !strings.Contains(logs.String(), "metrics scrape incomplete") {
				t.Errorf("the failed gathering is not logged:\n%s", logs)
			}
		})
	}
}
