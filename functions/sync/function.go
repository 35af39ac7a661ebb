// Package function is the sync function laid out for the Knative func CLI
// (invoke: http). It serves the same receiver `dovewarden sync` serves, so
// a request gets the same answers (413 for a body over --max-body, 400 for
// a batch or an unreadable event, both counted); all logic lives in
// pkg/syncer and pkg/replicator.
//
// func-go's server has fixed 30 s timeouts: here one event may take at most
// FuncRequestLimit, dsync retries included. Use `dovewarden sync` (its own
// server, configurable write timeout) where a dsync can take longer.
package function

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/syncer"
)

// FuncRequestLimit bounds one event under func-go, whose 30 s write
// timeout would otherwise cut the reply off.
const FuncRequestLimit = 25 * time.Second

// Function is one instance of the sync function.
type Function struct {
	mu      sync.RWMutex
	handler http.Handler
	close   func() error
}

// New is called by the func runtime once per instance.
func New() *Function { return &Function{} }

// Start configures the instance from the environment the func runtime
// passes (the same DOVEWARDEN_* variables as `dovewarden sync`), with the
// time limits func-go imposes.
func (f *Function) Start(ctx context.Context, cfg map[string]string) error {
	limits := map[string]string{
		"DOVEWARDEN_WRITE_TIMEOUT":   "30s",
		"DOVEWARDEN_REQUEST_TIMEOUT": FuncRequestLimit.String(),
		"DOVEWARDEN_DSYNC_TIMEOUT":   "20s",
		// Below the dsync bound, which would cut off a longer wait.
		"DOVEWARDEN_DSYNC_LOCK_TIMEOUT": "10s",
	}
	getenv := func(k string) string {
		if v, ok := cfg[k]; ok {
			return v
		}
		if v := os.Getenv(k); v != "" {
			return v
		}
		return limits[k]
	}
	c, err := syncer.Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, getenv)
	if err != nil {
		return err
	}
	if c.RequestTimeout > FuncRequestLimit {
		return fmt.Errorf("request-timeout %s: under the func runtime at most %s (func-go cuts responses at 30 s); run `dovewarden sync` for longer dsyncs",
			c.RequestTimeout, FuncRequestLimit)
	}
	f.mu.RLock()
	started := f.handler != nil
	f.mu.RUnlock()
	if started {
		// A second Start would open a second Redis client and lose
		// the first one, which Stop could then not close.
		return errors.New("sync function already started (Stop it first)")
	}
	reg := metrics.NewRegistry()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	h, closeFn, err := syncer.Build(ctx, c, reg, log)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg, log))
	h.Mount(mux)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.handler != nil { // a concurrent Start won
		return errors.Join(errors.New("sync function already started (Stop it first)"), closeFn())
	}
	f.handler, f.close = mux, closeFn
	return nil
}

// Handle serves the Broker's CloudEvents at / as `dovewarden sync` does,
// answering with the replication.succeeded/failed reply, if any, and
// GET /metrics.
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
	var err error
	if f.close != nil {
		err = f.close()
		f.close = nil
	}
	f.handler = nil // Ready says not started; Handle answers 503
	return err
}
