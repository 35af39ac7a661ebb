package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
)

// runBroker runs the embedded broker as its own process: a CloudEvents
// HTTP ingress and HTTP subscribers, so ingest and sync can run as
// separate processes exactly as on a cluster. It is a local stand-in for a
// Knative Broker, not durable and not distributed (docs/broker.md).
func runBroker(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("broker", env)
	var srv server.Options
	srv.RegisterFlags(fs, env.getenv, ":8081")
	var set broker.Settings
	set.RegisterFlags(fs)
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := errors.Join(srv.Validate(), set.Validate()); err != nil {
		return err
	}
	log, err := server.NewLogger(env.stderr, srv.LogFormat, srv.LogLevel)
	if err != nil {
		return err
	}
	warnUnused(log, fs, env)
	cfg, err := set.Load()
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	opts := set.Options()
	opts.Logger, opts.Registerer = log, reg
	b, err := broker.New(cfg, opts)
	if err != nil {
		return err
	}
	log.Info("broker ingress", "path", "/", "broker", b.Name())
	serveErr := serveRole(ctx, env, log, srv, nil, reg, func(mux *http.ServeMux) { mux.Handle("/", b.Ingress()) })
	sctx, cancel := context.WithTimeout(context.Background(), srv.ShutdownTimeout)
	defer cancel()
	undelivered, err := b.Shutdown(sctx)
	log.Info("broker stopped", "undelivered", len(undelivered))
	return errors.Join(serveErr, err)
}
