package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
)

// serveRole serves a role's routes beside /healthz, /readyz and /metrics
// on ln (or on o.Listen when ln is nil) until ctx ends; it turns ready once
// serving, calls each of serving with the listener's address, and tells a
// test through env.ready.
func serveRole(ctx context.Context, env *environment, log *slog.Logger, o server.Options, ln net.Listener,
	reg *prometheus.Registry, mount func(*http.ServeMux), serving ...func(net.Addr)) error {
	if err := o.LoadTLS(log, reg); err != nil {
		return err
	}
	var health server.Health
	mux := http.NewServeMux()
	health.Mount(mux, reg, log)
	mount(mux)
	ready := func(addr net.Addr) {
		for _, f := range serving {
			f(addr)
		}
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

// warnOpenListener warns at start when addr, the listener's address, can
// be reached from other hosts and no credentials (auth) guard it: what says
// what anyone there may then do, fix how to close it.
func warnOpenListener(log *slog.Logger, addr net.Addr, auth bool, what, fix string) {
	tcp, ok := addr.(*net.TCPAddr)
	if auth || !ok || tcp.IP.IsLoopback() {
		return
	}
	log.Warn("serving other hosts without credentials: anyone who can reach "+addr.String()+" can use "+what, "addr", addr.String(), "fix", fix)
}

// notSettings are DOVEWARDEN_* variables that are read elsewhere, not as
// a command's setting: by a profiling build (pprof_dev.go) and by the test
// harness that installs Dovecot 2.4.
var notSettings = []string{"DOVEWARDEN_PPROF_ADDR", "DOVEWARDEN_DOVECOT24_ROOT"}

// warnUnused logs a warning for each DOVEWARDEN_* variable that sets none
// of the command's flags (fs): a misspelt name would otherwise be ignored
// without a word.
func warnUnused(log *slog.Logger, fs *flag.FlagSet, env *environment) {
	if env.environ == nil {
		return
	}
	for _, name := range config.Unused(fs, env.environ(), notSettings...) {
		log.Warn("environment variable is no setting of this command; ignored", "variable", name, "command", fs.Name())
	}
}
