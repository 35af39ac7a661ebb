package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/server"
)

// Serve is server.Serve with the sync function's own timeouts: a write
// timeout long enough for a dsync, and a shutdown that hands work back.
// On ctx's end it stops taking requests and lets in-flight ones finish
// within o.ShutdownTimeout; then it cancels them, so each releases its
// lock, leaves its change pending and answers 503 (the Broker redelivers),
// and waits up to drain for those answers.
func Serve(ctx context.Context, log *slog.Logger, o server.Options, writeTimeout time.Duration, h http.Handler, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.Listen, err)
	}
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String(), "write_timeout", writeTimeout)
	if ready != nil {
		ready(ln.Addr())
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", o.Listen, err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", o.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err == nil {
		return nil
	}
	log.Warn("dsyncs still running at the shutdown timeout; handing them back")
	cancelBase()
	dctx, dcancel := context.WithTimeout(context.Background(), drain)
	defer dcancel()
	if err := srv.Shutdown(dctx); err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// drain bounds the wait for cancelled requests to answer.
const drain = 10 * time.Second
