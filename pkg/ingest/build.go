package ingest

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
)

// Build wires the ingest handler from a validated Config: the Broker sender
// and, when configured, Redis for pending marks. The returned close
// function releases the Redis connection. Both `dovewarden ingest` and the
// func-CLI function use it, so they cannot drift apart.
func Build(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Handler, func() error, error) {
	snd, err := sink.New(sink.Options{
		URL: cfg.BrokerURL, Overrides: cfg.CEOverrides, CACerts: cfg.CACerts,
		Budget: cfg.SendBudget, Retries: cfg.SendRetries, Backoff: cfg.SendBackoff,
	})
	if err != nil {
		return nil, nil, err
	}
	ho, err := cfg.HandlerOptions()
	if err != nil {
		return nil, nil, err
	}
	closeFn := func() error { return nil }
	var pending PendingMarker
	if cfg.Redis.URL != "" {
		state.LogTo(log)
		conn := cfg.Redis
		conn.Deadlines = true
		st, err := state.Open(conn)
		if err != nil {
			return nil, nil, err
		}
		pending, closeFn = st, st.Close
		// The server's checks, as sync's, but without holding up the
		// start: ingest serves Dovecot whether Redis answers or not.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			shown := "redis-url " + config.RedactURL(cfg.Redis.URL) + ": "
			warnings, err := st.CheckServer(ctx)
			if err != nil {
				log.Error(shown + err.Error() + "; pending marks will fail")
			}
			for _, w := range warnings {
				log.Warn(shown + w)
			}
		}()
		ho.Clock = st
		// What sync keeps in Redis, read at scrape time: ingest runs all
		// the time, where the sync function scales to zero, so alerts
		// on failing users, overdue sweeps and an evicting Redis always
		// have a series.
		reg.MustRegister(sweep.NewUsersCollector(st), sweep.NewStatusCollector(st), sweep.NewRedisCollector(st),
			metrics.NewTLSFilesCollector(st.TLSFilesFailing))
	}
	h := NewHandler(ho, snd, pending, reg, log)
	log.Info("ingest configured", "broker", snd.Target(), "redis", cfg.Redis.URL != "", "auth", ho.authKind())
	return h, closeFn, nil
}

func (o Options) authKind() string {
	switch {
	case o.Token != "":
		return "bearer"
	case o.BasicUser != "":
		return "basic"
	}
	return "none"
}

var _ http.Handler = (*Handler)(nil)
