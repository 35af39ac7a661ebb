package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/replicator"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
)

// Build wires the sync handler from a validated Config: Redis (scripts
// loaded, so every decision is one round trip), the doveadm transport, the
// host map and, when a results sink is set, the sender of intermediate
// replication.failed events. Both `dovewarden sync` and the func-CLI
// function use it. The returned close function releases Redis.
func Build(ctx context.Context, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Handler, func() error, error) {
	uf, err := cfg.usernameFormat()
	if err != nil {
		return nil, nil, err
	}
	exclude, err := doveadm.ParseExcludeMailboxes(cfg.ExcludeMailboxes)
	if err != nil {
		return nil, nil, fmt.Errorf("dsync-exclude-mailboxes: %w", err)
	}
	state.LogTo(log)
	st, err := state.Open(cfg.Redis)
	if err != nil {
		return nil, nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	warnings, err := st.CheckServer(pctx)
	if err == nil {
		err = st.LoadScripts(pctx)
	}
	if err != nil {
		st.Close()
		return nil, nil, fmt.Errorf("redis-url %s: %w", config.RedactURL(cfg.Redis.URL), err)
	}
	for _, w := range warnings {
		log.Warn("redis-url " + config.RedactURL(cfg.Redis.URL) + ": " + w)
	}
	httpTr := doveadm.NewHTTP(doveadm.Client(cfg.DoveadmCAs(), log), cfg.DsyncTimeout)
	var tr doveadm.Transport = httpTr
	var lister doveadm.Lister = httpTr
	if cfg.Transport == doveadm.TransportExec {
		x := doveadm.NewExec(cfg.DoveadmBin, cfg.DsyncTimeout)
		tr, lister = x, x
	}
	var notify replicator.Notifier
	var sweeper Sweeper
	results := cfg.Results
	if results == nil && cfg.ResultsSink != "" {
		snd, err := sink.New(sink.Options{URL: cfg.ResultsSink, Overrides: cfg.CEOverrides,
			Budget: 2 * time.Second, Retries: 3, Backoff: 50 * time.Millisecond,
			CACerts: cfg.CACerts})
		if err != nil {
			st.Close()
			return nil, nil, fmt.Errorf("results-sink: %w", err)
		}
		results = snd
	}
	if results != nil {
		notify = NewSinkNotifier(results, cfg.Source, reg, log)
		// The sweep's requests go the same way as the failure events.
		so := cfg.Sweep.options()
		so.Username = uf
		sweeper = sweep.New(so, st, lister, sweep.Sources(cfg.HostMap()), NewSinkSender(results), reg, log)
	} else {
		log.Warn("no results sink (--results-sink, K_SINK): sweep.requested events will be refused")
	}
	repl := replicator.New(replicator.Options{
		Owner: cfg.Instance, LockTTL: cfg.LockTTL, ClockSkew: cfg.ClockSkew, MaxAttempts: cfg.MaxAttempts,
		Backoff: cfg.RetryBackoff, MaxBackoff: cfg.RetryBackoffMax, RunAgainDelay: cfg.RunAgainDelay,
		MaxRounds: cfg.MaxRounds, LockTimeout: cfg.DsyncLockTimeout, ExcludeMailboxes: exclude,
	}, st, tr, cfg.HostMap(), notify, reg, log)
	// The series read at scrape time give up after a second: their client
	// ends calls at the context's deadline, which the decisions' client
	// does not (a Succeed cut short would leave its outcome unknown), so
	// that a Redis that hangs does not hold each scrape for the read
	// timeout and its retries.
	sc := cfg.Redis
	sc.Deadlines = true
	mst, err := state.Open(sc)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	doveadmCA := func() map[string]bool {
		if ca := cfg.DoveadmCAs(); ca != nil {
			return map[string]bool{"doveadm-ca-file": ca.Failing(log)}
		}
		return nil
	}
	reg.MustRegister(sweep.NewUsersCollector(mst), sweep.NewStatusCollector(mst), sweep.NewRedisCollector(mst),
		metrics.NewTLSFilesCollector(mst.TLSFilesFailing, doveadmCA))
	h := NewHandler(Options{Source: cfg.Source, Budget: cfg.RequestTimeout, MaxBody: cfg.MaxBody, Sweeper: sweeper, Results: results,
		Username: uf}, repl, reg, log)
	log.Info("sync configured", "transport", cfg.Transport, "default", cfg.HostMap().Default, "hosts", cfg.HostMap().Hosts(),
		"results_sink", results != nil, "lock_ttl", cfg.LockTTL, "request_timeout", cfg.RequestTimeout, "exclude_mailboxes", exclude)
	return h, func() error { return errors.Join(st.Close(), mst.Close()) }, nil
}

// SinkNotifier sends the replication.failed event of each attempt that the
// sync function retries itself to the Broker: only the final outcome can be
// the HTTP reply.
type SinkNotifier struct {
	snd    EventSender
	source string
	log    *slog.Logger
	fails  prometheus.Counter
}

// NewSinkNotifier makes the notifier.
func NewSinkNotifier(snd EventSender, source string, reg prometheus.Registerer, log *slog.Logger) *SinkNotifier {
	n := &SinkNotifier{snd: snd, source: source, log: log,
		fails: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: metrics.SyncNotifyFailures,
			Help: "replication.failed events of retried attempts that could not be sent to the Broker."})}
	reg.MustRegister(n.fails)
	return n
}

// AskAgain sends a replication.requested for req's user, with its
// priority and host, timed at (Redis's clock): the sync function's own
// request, after --max-rounds dsyncs left changes behind.
func (n *SinkNotifier) AskAgain(ctx context.Context, req change.Request, at time.Time) error {
	ev, err := contract.Requested(change.Request{User: req.User, Host: req.Host, Time: at, Priority: req.Priority},
		"max-rounds", n.source)
	if err == nil {
		err = n.snd.Send(ctx, ev)
	}
	return err
}

// AttemptFailed sends one replication.failed event; a failure to send is
// logged and counted, never fatal: the final outcome still follows.
func (n *SinkNotifier) AttemptFailed(ctx context.Context, req change.Request, f change.Failure) {
	ev, err := contract.Failed(req, f, n.source)
	if err == nil {
		err = n.snd.Send(ctx, ev)
	}
	if err != nil {
		n.fails.Inc()
		n.log.Warn("could not send replication.failed to the Broker", "user", f.User, "attempt", f.Attempt, "err", err)
	}
}
