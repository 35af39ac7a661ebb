// Package function is the ingest function laid out for the Knative func CLI
// (invoke: http). It wraps the same handler `dovewarden ingest` serves; all
// logic lives in pkg/ingest.
package function

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"sync"

	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// Function is one instance of the ingest function.
type Function struct {
	mu      sync.RWMutex
	handler http.Handler
	close   func() error
}

// New is called by the func runtime once per instance.
func New() *Function { return &Function{} }

// Start configures the instance from the environment the func runtime
// passes (the same DOVEWARDEN_* variables and K_SINK as `dovewarden ingest`).
func (f *Function) Start(_ context.Context, cfg map[string]string) error {
	getenv := func(k string) string {
		if v, ok := cfg[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
	c, err := ingest.Load(flag.NewFlagSet("ingest", flag.ContinueOnError), nil, getenv)
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	h, closeFn, err := ingest.Build(c, reg, log)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg, log))
	h.Mount(mux)
	f.mu.Lock()
	f.handler, f.close = mux, closeFn
	f.mu.Unlock()
	return nil
}

// Handle serves Dovecot's exporter POSTs (and /metrics).
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	f.mu.RLock()
	h := f.handler
	f.mu.RUnlock()
	if h == nil {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	h.ServeHTTP(w, r)
}

// Ready gates traffic until Start has finished.
func (f *Function) Ready(context.Context) (bool, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.handler == nil {
		return false, errors.New("not started")
	}
	return true, nil
}

// Stop releases the Redis connection.
func (f *Function) Stop(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.close == nil {
		return nil
	}
	return f.close()
}
