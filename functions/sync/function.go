// Package function is the sync function laid out for the Knative func CLI
// (invoke: cloudevent). It wraps the same handler `dovewarden sync` serves;
// all logic lives in pkg/syncer and pkg/replicator.
//
// func-go's server has fixed 30 s timeouts: here one event may take at most
// FuncRequestLimit, dsync retries included. Use `dovewarden sync` (its own
// server, configurable write timeout) where a dsync can take longer.
//
// func-go's server hands every path but its health checks to the
// CloudEvent handler, so the function serves its metrics on a listener of
// its own: GET /metrics on DOVEWARDEN_METRICS_LISTEN (default :9095).
package function

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/syncer"
)

// MetricsListenEnv names the address of the metrics listener;
// DefaultMetricsListen is the one used when it is not set.
const (
	MetricsListenEnv = "DOVEWARDEN_METRICS_LISTEN"
	// Not 9090 or 9091: queue-proxy, in the same pod and network
	// namespace, binds them (Knative reserves 8012, 8013, 8022, 8112,
	// 9090, 9091 and 8008; func-go takes 8080).
	DefaultMetricsListen = ":9095"
)

// FuncRequestLimit bounds one event under func-go, whose 30 s write
// timeout would otherwise cut the reply off.
const FuncRequestLimit = 25 * time.Second

// Function is one instance of the sync function.
type Function struct {
	mu      sync.RWMutex
	handler *syncer.Handler
	close   func() error
	metrics *http.Server
	// MetricsAddr is where the metrics listener listens, once started.
	MetricsAddr string
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
		// A second Start would open a second listener and Redis client
		// and lose the first ones, which Stop could then not close.
		return errors.New("sync function already started (Stop it first)")
	}
	addr := getenv(MetricsListenEnv)
	if addr == "" {
		addr = DefaultMetricsListen
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", MetricsListenEnv, err)
	}
	reg := metrics.NewRegistry()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	h, closeFn, err := syncer.Build(ctx, c, reg, log)
	if err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg, log))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(ln) }() // ErrServerClosed at Stop
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.handler != nil { // a concurrent Start won
		return errors.Join(errors.New("sync function already started (Stop it first)"), srv.Close(), closeFn())
	}
	f.handler, f.close, f.metrics, f.MetricsAddr = h, closeFn, srv, ln.Addr().String()
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

// Stop closes the metrics listener and releases the Redis connection.
func (f *Function) Stop(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	if f.metrics != nil {
		errs = append(errs, f.metrics.Close())
		f.metrics = nil
	}
	if f.close != nil {
		errs = append(errs, f.close())
		f.close = nil
	}
	f.handler = nil // Ready says not started; Handle refuses
	return errors.Join(errs...)
}
