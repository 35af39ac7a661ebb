// Package function is the sync function laid out for the Knative func CLI
// (invoke: cloudevent). It wraps the same handler `dovewarden sync` serves;
// all logic lives in pkg/syncer and pkg/replicator.
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
	"os"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/syncer"
)

// FuncRequestLimit bounds one event under func-go, whose 30 s write
// timeout would otherwise cut the reply off.
const FuncRequestLimit = 25 * time.Second

// Function is one instance of the sync function.
type Function struct {
	mu      sync.RWMutex
	handler *syncer.Handler
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
	// func-go serves its own /metrics; ours are not exposed here.
	h, closeFn, err := syncer.Build(ctx, c, prometheus.NewRegistry(), slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.handler, f.close = h, closeFn
	f.mu.Unlock()
	return nil
}

// Handle runs one mailbox.changed or replication.requested event and
// returns the replication.succeeded/failed reply, if any.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	f.mu.RLock()
	h := f.handler
	f.mu.RUnlock()
	if h == nil {
		return nil, errors.New("sync function not started")
	}
	return h.Handle(ctx, e)
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
