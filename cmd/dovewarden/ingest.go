package main

import (
	"context"
	"net"

	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
)

func runIngest(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("ingest", env)
	cfg, err := ingest.Load(fs, args, env.getenv)
	if err != nil {
		return err
	}
	log, err := server.NewLogger(env.stderr, cfg.Server.LogFormat, cfg.Server.LogLevel)
	if err != nil {
		return err
	}
	warnUnused(log, fs, env)
	defer ignoreHangups(ctx, log)()
	reg := metrics.NewRegistry()
	h, closeFn, err := ingest.Build(cfg, reg, log)
	if err != nil {
		return err
	}
	defer closeFn()
	auth := cfg.AuthUser != "" || cfg.AuthToken != "" || cfg.AuthTokenFile != ""
	return serveRole(ctx, env, log, cfg.Server, nil, reg, h.Mount, func(addr net.Addr) {
		warnOpenListener(log, addr, auth, "ingest (a change, and so a dsync, of any user)",
			"set --auth-user and --auth-password-file, or keep the listener where only Dovecot reaches it (a cluster-local Service)")
	})
}
