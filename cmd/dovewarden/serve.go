package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/server"
)

// serveRole serves a role's routes beside /healthz, /readyz and /metrics
// on ln (or on o.Listen when ln is nil) until ctx ends; it turns ready once
// serving and tells a test through env.ready.
func serveRole(ctx context.Context, env *environment, log *slog.Logger, o server.Options, ln net.Listener,
	reg *prometheus.Registry, mount func(*http.ServeMux)) error {
	var health server.Health
	mux := http.NewServeMux()
	health.Mount(mux, reg)
	mount(mux)
	ready := func(addr net.Addr) {
		health.SetReady(true)
		if env.ready != nil {
			env.ready(addr)
		}
	}
	if ln == nil {
		return server.Serve(ctx, log, o, mux, ready)
	}
	return server.ServeListener(ctx, log, o, ln, mux, ready)
}
