package main

import (
	"context"

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
	return serveRole(ctx, env, log, cfg.Server, nil, reg, h.Mount)
}
