package ingest

import (
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
)

// TestBuild_ARedisThatStopsAnsweringDoesNotHoldTheAnswer: with a Redis
// that takes connections and never answers (blackholed, paused), the
// stamp and the pending mark give up at their own deadlines, and a change
// the Broker takes is answered within Dovecot's exporter timeout (500 ms
// in the shipped snippets), not after the Redis library's 3 s read
// timeout, by which Dovecot has dropped the event.
func TestBuild_ARedisThatStopsAnsweringDoesNotHoldTheAnswer(t *testing.T) {
	addr := redistest.Silent(t)
	brokerSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(brokerSrv.Close)
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	cfg, err := Load(fs, []string{"--broker-url", brokerSrv.URL, "--redis-url", "redis://" + addr}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	h, closeFn, err := Build(cfg, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFn() })
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	began := time.Now()
	resp, err := http.Post(srv.URL+"/events", "application/json", strings.NewReader(appendEvent))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if took := time.Since(began); resp.StatusCode != http.StatusAccepted || took > 500*time.Millisecond {
		t.Errorf("answered %d after %v; want 202 within Dovecot's 500 ms", resp.StatusCode, took)
	}
}
