package main

import (
	"context"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
	"github.com/dovewarden/dovewarden-knative/pkg/syncer"
)

func runSync(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("sync", env)
	cfg, err := syncer.Load(fs, args, env.getenv)
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
	h, closeFn, err := syncer.Build(ctx, cfg, reg, log)
	if err != nil {
		return err
	}
	defer closeFn()
	// A dsync can outlast the 30 s write timeout the other roles use.
	cfg.Server.WriteTimeout = cfg.WriteTimeout
	return serveRole(ctx, env, log, cfg.Server, nil, reg, h.Mount)
}
