package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
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
	srv.RegisterFlags(fs, env.getenv, brokerListen)
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
	defer ignoreHangups(ctx, log)()
	cfg, err := set.Load()
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	if err := srv.LoadTLS(log, reg); err != nil {
		return err
	}
	opts := set.Options()
	opts.Logger, opts.Registerer = log, reg
	b, err := broker.New(cfg, opts)
	if err != nil {
		return err
	}
	if err := checkDisabledRoutes(cfg, b.Lanes()); err != nil {
		abandon(b, srv.ShutdownTimeout)
		return err
	}
	unlock, err := restoreHeld(b, set.SpoolFile)
	if err != nil {
		abandon(b, srv.ShutdownTimeout)
		return err
	}
	defer unlock() // after saveHeld
	log.Info("broker ingress", "path", "/", "broker", b.Name())
	stopped := stopBrokerWithListener(ctx, b, srv.ShutdownTimeout, log)
	serveErr := serveRole(ctx, env, log, srv, nil, reg, func(mux *http.ServeMux) { mux.Handle("/", b.Ingress()) },
		func(addr net.Addr) {
			warnOpenListener(log, addr, false, "the broker ingress (a full sync of any user, a forged alert)",
				"--listen 127.0.0.1:PORT (or [::1]:PORT), or a firewall that admits only ingest and sync")
		})
	held := stopped()
	if set.SpoolFile == "" && len(held) > 0 {
		log.Warn("the events the lanes held are lost: --spool-file would deliver them after the next start", "events", len(held))
	}
	log.Info("broker stopped", "undelivered", len(held))
	return errors.Join(serveErr, saveHeld(b, set.SpoolFile, held, log))
}

// stopBrokerWithListener stops b when ctx ends, as the listener begins its
// own stop: both get timeout from that moment, so a stop takes at most
// about --shutdown-timeout, the listener's drain and what follows (marks,
// the spool file), not the listener's time and then the broker's. An event
// published after b stopped is refused (ErrClosed): ingest marks its user
// pending and answers 503, the ingress answers 503. The returned wait
// gives what b held once the stop is done; it stops b itself if ctx never
// ended (the listener failed on its own).
func stopBrokerWithListener(ctx context.Context, b *broker.Broker, timeout time.Duration, log *slog.Logger) (wait func() []broker.Held) {
	done := make(chan []broker.Held, 1)
	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		done <- shutdownBroker(sctx, b, log)
	}
	stop := context.AfterFunc(ctx, shutdown)
	return func() []broker.Held {
		if stop() {
			shutdown()
		}
		return <-done
	}
}

// shutdownBroker stops b. Deliveries still running at the end of ctx are
// cancelled and handed back with what the lanes held: that is the
// documented stop, not a failure, so it is logged, not returned (a
// systemctl stop leaves the unit inactive, not failed).
func shutdownBroker(ctx context.Context, b *broker.Broker, log *slog.Logger) []broker.Held {
	held, err := b.Shutdown(ctx)
	if err != nil {
		log.Warn("deliveries still running at the end of --shutdown-timeout were cancelled and handed back", "err", err)
	}
	return held
}

// abandon stops b after a start that failed, within timeout.
func abandon(b *broker.Broker, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	b.Shutdown(ctx)
}

// restoreHeld takes the spool file's lock, then gives the events a
// stopped broker saved in the file back to their lanes, before the broker
// takes any event; an error names the setting. The caller calls unlock
// once the stop has saved what the lanes held (saveHeld): a second
// process on the same file, refused here, would otherwise write it over,
// or remove it, at its own stop.
func restoreHeld(b *broker.Broker, path string) (unlock func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	unlock, err = broker.LockSpool(path)
	if err != nil {
		return nil, fmt.Errorf("spool-file %s: %w", path, err)
	}
	if _, err := b.RestoreSpool(path); err != nil {
		unlock()
		return nil, fmt.Errorf("spool-file %s: %w", path, err)
	}
	return unlock, nil
}

// saveHeld saves what the lanes held at the stop in the spool file, if
// one is set (replacing it; nothing held removes it).
func saveHeld(b *broker.Broker, path string, held []broker.Held, log *slog.Logger) error {
	if path == "" {
		return nil
	}
	if err := b.SaveSpool(path, held); err != nil {
		log.Error("the events the lanes held are lost: the spool file was not written", "file", path, "events", len(held), "err", err)
		return fmt.Errorf("spool-file %s: %w", path, err)
	}
	return nil
}

// checkDisabledRoutes refuses a start where the only Triggers that route an
// event the sync function takes are disabled (their subscriber maps to
// nothing): the broker would accept those events, ingest would answer
// Dovecot that they are safe, and they would go nowhere. Knative does the
// same with a Trigger that is not ready; here a forgotten --subscriber is
// far likelier than a deliberate one. A folder with no Trigger for them at
// all is deliberate, and allowed.
func checkDisabledRoutes(cfg *broker.Config, lanes []broker.LaneInfo) error {
	enabled := map[string]bool{}
	for _, l := range lanes {
		enabled[l.Trigger] = l.Enabled
	}
	probes, err := syncProbes()
	if err != nil {
		return err
	}
	for _, ev := range probes {
		var off *broker.Trigger
		routed := false
		for _, tr := range cfg.Triggers {
			if tr.Filter.Match(ev) {
				if enabled[tr.Name] {
					routed = true
				} else if off == nil {
					off = tr
				}
			}
		}
		if !routed && off != nil {
			name := off.Subscriber.Ref
			if name == "" {
				name = off.Subscriber.String()
			}
			return fmt.Errorf("subscriber: Trigger %s routes %s with priority %v to %q, which no --subscriber maps to a URL (--subscriber %s=URL): those events would be accepted and then go nowhere",
				off.Name, ev.Type(), ev.Extensions()[contract.ExtPriority], name, name)
		}
	}
	return nil
}
