package main

import (
	"context"
	"flag"
	"net"
	"net/http"

	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

func runIngest(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	cfg, err := ingest.Load(fs, args, env.getenv)
	if err != nil {
		return err
	}
	log, err := server.NewLogger(env.stderr, cfg.Server.LogFormat, cfg.Server.LogLevel)
	if err != nil {
		return err
	}
	snd, err := sink.New(sink.Options{
		URL: cfg.BrokerURL, Overrides: cfg.CEOverrides,
		Budget: cfg.SendBudget, Retries: cfg.SendRetries, Backoff: cfg.SendBackoff,
	})
	if err != nil {
		return err
	}
	var pending ingest.PendingMarker
	if cfg.RedisURL != "" {
		st, err := state.Open(cfg.RedisURL)
		if err != nil {
			return err
		}
		defer st.Close()
		pending = st
	}
	reg := metrics.NewRegistry()
	h := ingest.NewHandler(ingest.Options{
		MaxBody: cfg.MaxBody, BasicUser: cfg.AuthUser, BasicPassword: cfg.AuthPassword, Token: cfg.AuthToken,
	}, snd, pending, reg, log)
	var health server.Health
	mux := http.NewServeMux()
	health.Mount(mux, reg)
	h.Mount(mux)
	log.Info("ingest starting", "broker", snd.Target(), "redis", cfg.RedisURL != "", "auth", authKind(cfg))
	return server.Serve(ctx, log, cfg.Server, mux, func(addr net.Addr) {
		health.SetReady(true)
		if env.ready != nil {
			env.ready(addr)
		}
	})
}

func authKind(c ingest.Config) string {
	switch {
	case c.AuthToken != "":
		return "bearer"
	case c.AuthUser != "":
		return "basic"
	}
	return "none"
}
