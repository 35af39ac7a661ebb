package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
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
	o.Metrics = reg
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
// of the command's flags (fs) and is not read otherwise (the variables
// --host-map-file's entries name): a misspelt name would otherwise be
// ignored without a word; and for each secret given as a flag
// (warnSecretArgs).
func warnUnused(log *slog.Logger, fs *flag.FlagSet, env *environment) {
	warnSecretArgs(log, fs, env)
	if env.environ == nil {
		return
	}
	read := notSettings
	if f := fs.Lookup("host-map-file"); f != nil && f.Value.String() != "" {
		if b, err := doveadm.ReadHostMapFile(f.Value.String()); err == nil {
			read = append(slices.Clip(read), doveadm.HostMapVariables(b)...)
		}
	}
	for _, name := range config.Unused(fs, env.environ(), read...) {
		log.Warn("environment variable is no setting of this command; ignored", "variable", name, "command", fs.Name())
	}
}

// warnSecretArgs logs a warning for each secret given as a command-line
// flag: every user of the machine reads a process's arguments (ps,
// /proc/PID/cmdline). A secret is a setting with a -file form
// (auth-password, auth-token, doveadm-password, doveadm-api-key); one
// equal to its environment variable came from there.
func warnSecretArgs(log *slog.Logger, fs *flag.FlagSet, env *environment) {
	fs.Visit(func(f *flag.Flag) {
		if fs.Lookup(f.Name+"-file") == nil || f.Value.String() == env.getenv(config.EnvName(f.Name)) {
			return
		}
		log.Warn("a secret is given as a command-line flag, which other users of this machine can read (ps); use its file or its environment variable",
			"flag", f.Name, "file", f.Name+"-file", "variable", config.EnvName(f.Name))
	})
}
