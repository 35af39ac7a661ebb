package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
	"github.com/dovewarden/dovewarden-knative/pkg/syncer"
)

// localSyncSubscribers are the Trigger subscriber names the sync handler
// answers to in local mode: the two lanes of config/broker/triggers.yaml.
var localSyncSubscribers = []string{"dovewarden-sync-high", "dovewarden-sync-low"}

// localNamespace is the namespace local mode's broker stands in: the
// subscribers get it as Kn-Namespace. brokerPath is where local mode
// serves the embedded broker's ingress, the path Knative's broker-ingress
// would have for that namespace.
const (
	localNamespace = "local"
	brokerPath     = "/" + localNamespace + "/dovewarden"
)

// localListen and brokerListen are the default --listen of local and
// broker, the roles that never run on Knative: loopback only.
const (
	localListen  = "127.0.0.1:8080"
	brokerListen = "127.0.0.1:8090"
)

// setDefault changes the default of fs's flag name, before it is parsed.
func setDefault(fs *flag.FlagSet, name, value string) {
	f := fs.Lookup(name)
	if err := f.Value.Set(value); err != nil {
		panic(err)
	}
	f.DefValue = value
}

// runLocal runs the whole system in one process: ingest's listener, the
// embedded broker routing with the real Trigger manifests, the sync
// handler as the lanes' in-process subscriber, and Redis (embedded unless
// --redis-url names a server).
func runLocal(ctx context.Context, env *environment, args []string) error {
	started := time.Now().UTC().Truncate(time.Millisecond)
	fs := newFlagSet("local", env)
	var sc syncer.Config
	sc.RegisterFlags(fs, env.getenv)
	// Local mode never runs on Knative: unless PORT says otherwise, it
	// serves this machine only (Dovecot's events snippet posts to
	// 127.0.0.1:8080). --listen opens it to others, with --auth-*.
	if env.getenv("PORT") == "" {
		setDefault(fs, "listen", localListen)
	}
	// Two sync settings mean something else here.
	fs.Lookup("redis-url").Usage = "Redis URL (redis://, rediss:// or unix://; ?master_name=NAME to find the primary through Sentinel) holding locks, coalescing marks, dsync states and status; empty: an embedded Redis whose state is lost when the process ends"
	fs.Lookup("results-sink").Usage = "not used: local mode sends to its own broker"
	var ic ingest.Config
	ic.RegisterHandlerFlags(fs)
	var bs broker.Settings
	bs.RegisterFlags(fs)
	sweepEvery := fs.Duration("sweep-every", time.Hour, "ask for a sweep at start and then this often, as the PingSource does on a cluster; 0: only at start")
	excludedPath := fs.String("excluded-users", "", "file of users never replicated, one per line ('#' starts a comment); it replaces Redis's excluded set at start and on SIGHUP")
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *sweepEvery < 0 {
		return fmt.Errorf("sweep-every %s: must not be negative (0: a sweep only at start)", *sweepEvery)
	}
	if *sweepEvery > 0 && *sweepEvery < time.Minute {
		// Measured with 1ns: 1.2 cores and some 60,000 log lines a second
		// of sweeps asked for and covered by the one running.
		return fmt.Errorf("sweep-every %s: want at least 1m, as a PingSource's schedule (0: a sweep only at start); a sweep lists every user of every host, and one asked for while another runs is covered by it", *sweepEvery)
	}
	// K_CA_CERTS is the CA of a Knative Broker's https address; local mode
	// sends only to its own listener and does not read it.
	sc.CACerts = ""
	log, err := server.NewLogger(env.stderr, sc.Server.LogFormat, sc.Server.LogLevel)
	if err != nil {
		return err
	}
	warnUnused(log, fs, env)
	if sc.ResultsSink != "" {
		log.Warn("results-sink is not used by dovewarden local, which sends to its own broker; ignored", "results_sink", config.RedactURL(sc.ResultsSink))
	}
	if sc.CEOverrides != "" {
		log.Warn("K_CE_OVERRIDES is not used by dovewarden local, whose events go to its own broker in process; ignored")
	}
	sc.ResultsSink, sc.CEOverrides = "", ""
	// The sync function's own events go into the broker in process.
	own := &ownEvents{}
	sc.Results = own
	// A SIGHUP from here on waits for reloadOnHangup instead of ending the
	// process.
	hup := hangups()
	defer signal.Stop(hup)

	ln, err := net.Listen("tcp", sc.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", sc.Server.Listen, err)
	}
	defer ln.Close()

	var clock ingest.Clock
	embedded := sc.Redis.URL == ""
	if embedded {
		// The embedded Redis's TIME is this process's clock: stamp changes
		// with it directly, without a round trip.
		clock = processClock{}
		// The sweep's claims outlive its steps by 5 s (sweep.claimTTL),
		// which a lowering must not take: as a lock of 32 s would.
		url, stop, err := startEmbeddedRedis(min(sc.LockTTL, 32*time.Second))
		if err != nil {
			return fmt.Errorf("embedded redis: %w", err)
		}
		defer stop()
		sc.Redis.URL = url
		log.Warn("using embedded Redis: locks, marks and dsync states are lost when this process ends; give --redis-url to keep them")
		if sc.Sweep.List == sweep.ListKnown {
			log.Warn("sweep-list known with the embedded Redis: after each start Redis knows no user, so the sweeps request only users whose changes came since; give --redis-url")
		}
	}
	// One setting for both: ingest's handler and sync's requests.
	sc.UsernameFormat = ic.UsernameFormat
	if err := sc.Resolve(env.getenv); err != nil {
		return err
	}
	ic.MaxBody = sc.MaxBody
	ho, err := ic.HandlerOptions()
	if err != nil {
		return err
	}
	warnOpenListener(log, ln.Addr(), ho.Token != "" || ho.BasicUser != "",
		"ingest, the broker ingress (a full sync of any user, a forged alert) and /status (users and their errors)",
		"set --auth-user and --auth-password-file (or --auth-token-file), or --listen 127.0.0.1:PORT (or [::1]:PORT)")
	if err := bs.Validate(); err != nil {
		return err
	}
	bcfg, err := bs.Load()
	if err != nil {
		return err
	}
	if err := checkSyncRoutes(bcfg); err != nil {
		return err
	}
	if err := checkSyncTimeouts(bcfg, bs.DeliveryTimeout, sc.RequestTimeout); err != nil {
		return err
	}

	reg := metrics.NewRegistry()
	if err := sc.Server.LoadTLS(log, reg); err != nil {
		return err
	}
	sh, closeSync, err := syncer.Build(ctx, sc, reg, log)
	if err != nil {
		return err
	}
	defer closeSync()
	// Ingest's stamp and pending marks, the status and the marks at a stop
	// bound each call: a Redis that stops answering must not hold
	// Dovecot's answer past its exporter timeout.
	conn := sc.Redis
	conn.Deadlines = true
	st, err := state.Open(conn)
	if err != nil {
		return err
	}
	defer st.Close()
	// With a Redis that outlives the process, the sweep at start must
	// still replicate every user: see state.RecoveryKey. The embedded one
	// knows no user at a start, but a user never replicated is requested
	// as such only when its full sync is due, which --full-sync-interval 0
	// never makes: the recovery time requests every user all the same.
	var deadLocks bool
	if embedded {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := st.SetRecovery(rctx, sc.Sweep.FullSyncInterval)
		cancel()
		if err != nil {
			return fmt.Errorf("embedded redis: %w", err)
		}
	} else {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		at, err := st.SetRecovery(rctx, sc.Sweep.FullSyncInterval)
		if err == nil {
			deadLocks, err = st.LockHeld(rctx)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("redis-url %s: %w", config.RedactURL(sc.Redis.URL), err)
		}
		log.Info("changes made while dovewarden was not running left no event: the sweep replicates every user whose last dsync started before this start", "recovery", at)
		if deadLocks {
			log.Info("users' locks are held, by a run that ended without releasing them or another process: one more sweep follows when they expire", "lock_ttl", sc.LockTTL)
		}
	}
	// Excluded users before the first event and the sweep at start.
	var excluded *excludedFile
	if *excludedPath != "" {
		excluded = newExcludedFile(*excludedPath, ho.Username, st, reg, log)
		if err := excluded.load(ctx); err != nil {
			return err
		}
	}

	bo := bs.Options()
	bo.Namespace = localNamespace
	// Its ingress shares the listener Dovecot posts to: one body limit.
	bo.MaxBody = sc.MaxBody
	bo.Handlers = map[string]broker.Handler{}
	for _, name := range localSyncSubscribers {
		bo.Handlers[name] = syncHandler(sh)
	}
	bo.Logger, bo.Registerer = log, reg
	b, err := broker.New(bcfg, bo)
	if err != nil {
		return err
	}
	own.b.Store(b)
	unlock, err := restoreHeld(b, bs.SpoolFile)
	if err != nil {
		abandon(b, sc.Server.ShutdownTimeout)
		return err
	}
	defer unlock() // after saveHeld
	for _, l := range b.Lanes() {
		log.Info("lane", "trigger", l.Trigger, "enabled", l.Enabled, "subscriber", l.Subscriber, "workers", l.Workers, "queue", l.QueueSize)
	}

	go reloadOnHangup(ctx, hup, excluded, log)

	// Ingest hands changes straight to the broker: a full lane makes
	// Publish fail, so Dovecot gets a 503 and the user is marked pending.
	if clock == nil {
		clock = st
	}
	ho.Clock = clock
	ih := ingest.NewHandler(ho, b, st, reg, log)
	log.Info("local mode", "ingest", "POST /events", "broker", brokerPath, "status", "GET /status, GET /status/{user}", "metrics", "GET /metrics")
	// A sweep at start: Dovecot dropped the events of changes made while
	// no run was listening, and with the embedded Redis every state is
	// gone (every user gets a full sync); with --redis-url the recovery
	// time makes it replicate every user.
	go sweepTimer(ctx, b, *sweepEvery, log)
	go retrySweeps(ctx, b, st, sc.Sweep.FailedRetryInterval, log)
	if deadLocks {
		go recoverySweep(ctx, st, sc.LockTTL, 5*time.Second, func() { requestSweep(ctx, b, sweep.SweepReasonRecovery, log) })
	}

	// At the stop the listener and the lanes finish together, within one
	// --shutdown-timeout.
	stopped := stopBrokerWithListener(ctx, b, sc.Server.ShutdownTimeout, log)
	sc.Server.WriteTimeout = sc.WriteTimeout
	serr := serveRole(ctx, env, log, sc.Server, ln, reg, func(mux *http.ServeMux) {
		mux.Handle(brokerPath, ih.Protect(b.Ingress()))
		mux.Handle("GET /status", ih.Protect(overviewHandler(st, b, ih, started)))
		mux.Handle("GET /status/{user}", ih.Protect(statusHandler(st, ho.Username)))
		mux.Handle("/status", server.OnlyGet)
		mux.Handle("/status/{user}", server.OnlyGet)
		ih.Mount(mux)
	})
	held := stopped()
	if len(held) > 0 {
		// The marks too when the spool file is set: they do not depend
		// on the file being written and read again.
		switch {
		case embedded && bs.SpoolFile == "":
			log.Warn("queued events dropped at shutdown; the sweep at the next start replicates every user", "events", len(held))
		case !embedded:
			markUndelivered(st, held, ho.Username, bs.SpoolFile != "", log)
		}
	}
	return errors.Join(serr, saveHeld(b, bs.SpoolFile, held, log))
}

// markUndeliveredBudget bounds the marks at shutdown (one Redis round trip
// per user the lanes held), after the --shutdown-timeout the listener and
// the broker share and the listener's drain: together within the systemd
// unit's TimeoutStopSec (docs/operations.md).
const markUndeliveredBudget = 5 * time.Second

// markUndelivered leaves a pending mark in Redis for the user of each
// change or replication request the broker dropped at shutdown, as ingest
// does for a change the broker refuses: the sweep at the next start
// replicates them first (pending users lead its candidates), before the
// users it requests only for the recovery time. spooled: the events go to
// the spool file next (saveHeld), so the messages do not call them lost.
func markUndelivered(st *state.Store, held []broker.Held, uf dovecot.UsernameFormat, spooled bool, log *slog.Logger) {
	fate, also := "queued events dropped at shutdown", ""
	if spooled {
		fate, also = "queued events not delivered by shutdown, to be saved to the spool file", "also "
	}
	// One mark per user: the oldest change, on the host it came from.
	oldest := map[string]change.Request{}
	for _, h := range held {
		if h.Phase == broker.PhaseReply {
			continue // delivered: its dsync ran
		}
		req, err := contract.ToRequest(h.Event)
		if err != nil || req.User == "" {
			continue // a reply, a sweep request, or no user to mark
		}
		// An administrator's request names the user as typed: marked so,
		// the mark would never be cleared, the sync replicating the name
		// normalised.
		if req.User, err = doveadm.NormalizeUser(req.User, uf); err != nil {
			continue
		}
		if req.Time.IsZero() {
			req.Time = time.Now()
		}
		if o, ok := oldest[req.User]; !ok || req.Time.Before(o.Time) {
			oldest[req.User] = req
		}
	}
	if len(oldest) == 0 {
		log.Warn(fate+"; none was a change or a replication request", "events", len(held))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), markUndeliveredBudget)
	defer cancel()
	marked := 0
	for user, req := range oldest {
		if err := st.MarkPending(ctx, user, req.Host, req.Time); err != nil {
			msg := "queued changes dropped at shutdown and not marked pending: the sweep at the next start replicates them with every other user"
			if spooled {
				msg = "queued changes not marked pending at shutdown: only the spool file keeps them for the next start (and the sweep at that start replicates every user)"
			}
			log.Error(msg, "events", len(held), "users", len(oldest), "marked", marked, "err", err)
			return
		}
		marked++
	}
	log.Warn(fate+"; their users are "+also+"marked pending for the sweep", "events", len(held), "users", marked)
}

// sweepTimer publishes a sweep.requested into the broker now and then
// every interval (never when interval is 0), like the PingSource.
func sweepTimer(ctx context.Context, b *broker.Broker, every time.Duration, log *slog.Logger) {
	reason := sweep.SweepReasonStart
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		requestSweep(ctx, b, reason, log)
		reason = sweep.SweepReasonSchedule
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
	}
}

// retrySweeps asks for a retry sweep (the failed and pending users, no
// listing) as soon as the oldest failed user's retry is due
// (--failed-retry-interval after its failure), as Dovecot 2.3's
// replicator retried failed users: otherwise a failed user with no new
// change would wait for the next scheduled sweep (an hour by default)
// after its replica came back. While users keep failing, that is at most
// one retry sweep each tenth of the interval (retryGap).
func retrySweeps(ctx context.Context, b *broker.Broker, st *state.Store, every time.Duration, log *slog.Logger) {
	retryWhenDue(ctx, st, every, func() { requestSweep(ctx, b, sweep.SweepReasonRetry, log) }, log)
}

// retryWhenDue calls ask each time the oldest failed user's retry is due,
// looking again every interval at most. Due is read on Redis's TIME, the
// clock the sweep decides by and the failure times are on: by this
// process's clock, ahead of an external Redis's, or by state's Now, which
// stays at the latest attempt start after TIME stepped back, the sweep
// would find the user not due yet, and the next retry would come a whole
// interval later.
func retryWhenDue(ctx context.Context, st *state.Store, every time.Duration, ask func(), log *slog.Logger) {
	for {
		wait, err := retryOnce(ctx, st, every, ask)
		if err != nil && ctx.Err() == nil {
			log.Warn("could not look for failed users to retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// retryGap is the least wait after asking for a retry sweep, as a part
// of the interval. Each retry sweep reads every failed and pending user;
// while a replica is down, users fail (and fail again at their retries)
// each at its own time, and a sweep for each retry coming due could be
// one every 100 ms, each reading them all. So a user's retry may come a
// tenth of the interval after it is due.
const retryGap = 10

// retryOnce asks for a retry sweep when the oldest failed user's retry is
// due, and returns how long to wait before looking again: until the next
// failed user's retry is due (the sweep asked for retries every user due
// now), but at least a tenth of the interval (retryGap) after asking, and
// at most an interval, even when TIME stepped back after a failure (a
// user failing meanwhile is stamped earlier, and due sooner).
//
// It asks too when a user that is not failed has been pending for an
// interval: a change a full lane refused (Dovecot got a 503, ingest
// marked the user), a rerun that could not be handed back to the broker,
// a change merged into a dsync whose owner then died. Such a mark lives
// for the seconds of a dsync otherwise. A retry sweep takes the pending
// users too, as the cluster's retry PingSource does every 5 minutes;
// without it they waited for the hourly sweep. After that it looks again
// an interval later (marks still there are changes a backlog holds), or
// when a failed user's retry is due, if sooner.
func retryOnce(ctx context.Context, st *state.Store, every time.Duration, ask func()) (time.Duration, error) {
	now, err := st.Time(ctx)
	if err != nil {
		return every, err
	}
	oldest, failed, err := st.NextFailure(ctx, time.Time{})
	if err != nil {
		return every, err
	}
	pending, waiting, err := st.OldestPendingOnly(ctx, pendingLook)
	if err != nil {
		return every, err
	}
	until := func(t time.Time) time.Duration { return t.Add(every).Sub(now) + 100*time.Millisecond }
	switch {
	case failed && !now.Before(oldest.Add(every)):
		ask()
		next, ok, err := st.NextFailure(ctx, now.Add(-every))
		if err != nil || !ok {
			return every, err
		}
		return max(min(until(next), every), every/retryGap), nil
	case waiting && !now.Before(pending.Add(every)):
		ask()
		if failed {
			return max(min(until(oldest), every), every/retryGap), nil
		}
		return every, nil
	}
	wait := every
	if failed {
		wait = min(wait, until(oldest))
	}
	if waiting {
		wait = min(wait, until(pending))
	}
	return wait, nil
}

// pendingLook is how many of the oldest pending users retryOnce reads for
// one that is not failed: past them, a replica is down and the failed
// users' retries come first anyway.
const pendingLook = 100

// requestSweep publishes a sweep.requested into the broker.
func requestSweep(ctx context.Context, b *broker.Broker, reason string, log *slog.Logger) {
	ev, err := contract.SweepRequest(reason, "dovewarden/local", false)
	if err == nil {
		err = b.Publish(ctx, ev)
	}
	if err != nil && ctx.Err() == nil {
		log.Warn("could not ask for a sweep", "reason", reason, "err", err)
	}
}

// recoverySweep asks for one more sweep once the locks found at start have
// expired (a run that died mid-dsync left them): the sweep at start skips
// users whose lock is held, and the recovery time still names them. Only
// then: a second sweep while the lanes still hold the first one's
// requests would ask for those users again. And only once no sweep runs:
// a request while one runs is covered by it, and the sweep at start, of
// many users, may still run then, past the users it skipped; they would
// wait for the next scheduled sweep (with --sweep-every 0, for their next
// change). Until then it asks Redis every poll.
func recoverySweep(ctx context.Context, sweeps sweep.StatusReader, lockTTL, poll time.Duration, request func()) {
	wait := lockTTL + time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if s, err := sweeps.SweepStatus(ctx); err == nil && !s.Running {
			request()
			return
		}
		wait = poll
	}
}

// processClock is the embedded Redis's clock, read without asking it: this
// process's clock, in milliseconds, never before the high-water mark the
// sync scripts keep (state.Now, state.ClockKey). Every attempt starts in
// this process, so state.LatestStart is that mark.
type processClock struct{}

func (processClock) Now(context.Context) (time.Time, error) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	if hw := state.LatestStart(); hw.After(now) {
		now = hw
	}
	return now, nil
}

// syncHandler adapts the sync function's entry point to an in-process
// broker subscriber: the same method its HTTP receiver calls.
func syncHandler(h *syncer.Handler) broker.Handler {
	return func(ctx context.Context, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		reply, err := h.Handle(ctx, ev)
		if err != nil {
			return reply, err
		}
		return reply, nil
	}
}

// overview is local mode's whole status (GET /status), as `doveadm
// replicator status` showed it: users waiting or failed, the sweep, and
// what each lane holds.
type overview struct {
	Users state.Overview    `json:"users"`
	Sweep state.SweepStatus `json:"sweep"`
	Lanes []laneStatus      `json:"lanes,omitempty"`
	// Events is what local mode's ingest received since its start.
	Events *eventsStatus `json:"events,omitempty"`
	// RunningUsers (the longest running first), FailedUsers (the oldest
	// failure first) and PendingUsers (the oldest change first) list up
	// to ?list=N users (20 by default).
	RunningUsers []state.UserStatus  `json:"running_users"`
	FailedUsers  []state.UserStatus  `json:"failed_users"`
	PendingUsers []state.PendingUser `json:"pending_users"`
}

type laneStatus struct {
	Trigger    string `json:"trigger"`
	Enabled    bool   `json:"enabled"`
	Subscriber string `json:"subscriber,omitempty"`
	Workers    int    `json:"workers"`
	QueueSize  int    `json:"queue_size"`
	Queued     int64  `json:"queued"`
	InFlight   int64  `json:"in_flight"`
}

// eventsStatus is what ingest received since the process started: none
// at all, while users change their mail, is an exporter that does not
// reach ingest (its URL, a metric filter not loaded).
type eventsStatus struct {
	Since time.Time         `json:"since"`
	Hosts []ingest.HostSeen `json:"hosts"`
}

// statusBudget bounds the Redis reads of /status and /status/{user}: a
// Redis that hangs gets 503 after it, as one that is down gets at once.
// The store they read through ends calls at their context's deadline.
const statusBudget = 5 * time.Second

// overviewHandler serves the overview as JSON; since is when the process
// started.
func overviewHandler(st *state.Store, b *broker.Broker, ih *ingest.Handler, since time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		list, err := listParam(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), statusBudget)
		defer cancel()
		o, err := readOverview(ctx, st, list)
		if err != nil {
			http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		for _, l := range b.Lanes() {
			o.Lanes = append(o.Lanes, laneStatus{Trigger: l.Trigger, Enabled: l.Enabled, Subscriber: config.RedactURL(l.Subscriber),
				Workers: l.Workers, QueueSize: l.QueueSize, Queued: l.Queued, InFlight: l.InFlight})
		}
		o.Events = &eventsStatus{Since: since, Hosts: ih.Hosts()}
		writeJSON(w, o)
	})
}

// writeJSON answers v as indented JSON, for people and jq alike.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// statusHandler serves one user's replication status as JSON. The name
// is normalised as ingest normalises the events' users (uf), since the
// records are kept under that name: /status/Alice is alice's.
func statusHandler(st *state.Store, uf dovecot.UsernameFormat) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := uf.Apply(r.PathValue("user"))
		if err := doveadm.ValidateUser(user); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), statusBudget)
		defer cancel()
		s, err := st.Status(ctx, user)
		if err != nil {
			http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, s)
	})
}

// startEmbeddedRedis starts the embedded Redis and returns its URL and
// what stops it. It listens on loopback, where any local user could
// connect: a random password keeps it to this process.
//
// Its TTLs run: miniredis lowers them only when told, and the locks of
// users and of the sweep, the sweep's claims and candidate sets expire by
// them (a dead owner's lock, a sweep whose continuation was lost). So
// every so often the TTLs are lowered by the time that passed. A key then
// lives its TTL give or take that interval: longer when it is lowered
// after the key's time ran out, shorter when the key was set just before
// a lowering that takes off the whole interval. The interval is at most
// an eighth of the shortest TTL a lock keeps while it is renewed
// (minTTL): sync takes a lock as held for five sixths of its TTL. Lowering
// the TTLs sorts every key under miniredis's lock (4 ms for 10,000 users,
// 63 ms for 100,000: BenchmarkEmbeddedRedisExpire; its ClockTTL would do
// it at every command), so with many keys it is done less often, at most
// 1% of a core, but never less often than the bound allows.
func startEmbeddedRedis(minTTL time.Duration) (url string, stop func(), err error) {
	mr := miniredis.NewMiniRedis()
	password := rand.Text()
	mr.RequireAuth(password)
	if err := startLoopback(mr, embeddedRedisAddrs...); err != nil {
		return "", nil, err
	}
	every, most := expireInterval(minTTL)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		e := &expirer{mr: mr, last: time.Now(), next: every}
		t := time.NewTimer(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				took := e.lower(time.Now())
				// At most 1% of a core: the next time waits 100
				// times what this one took, within the bound.
				e.next = min(max(every, 100*took), most)
				t.Reset(e.next)
			}
		}
	}()
	stop = func() {
		close(done)
		<-ended
		mr.Close()
	}
	return "redis://:" + password + "@" + mr.Addr(), stop, nil
}

// expirer lowers the embedded Redis's TTLs by the time that passed.
type expirer struct {
	mr   *miniredis.Miniredis
	last time.Time     // the last lowering
	next time.Duration // the interval the next lowering was due after
}

// lower lowers every TTL by the time since the last lowering, but by no
// more than the interval it was due after, and returns what it took. A
// key set just before a lowering loses that time too, though it was not
// there for it: late, under load, by the lateness as well, a lock could
// expire before the five sixths of its TTL its owner counts on, and a
// second dsync of the user start. So lateness is not taken off: keys
// then live longer than their TTL by it, which only delays the takeover
// of a dead owner's lock.
func (e *expirer) lower(now time.Time) (took time.Duration) {
	e.mr.FastForward(min(now.Sub(e.last), e.next))
	e.last = now
	return time.Since(now)
}

// expireInterval is how often the embedded Redis's TTLs are lowered for
// locks of minTTL: every second, or an eighth of minTTL when that is
// shorter; and at the longest, with many keys, an eighth of minTTL.
func expireInterval(minTTL time.Duration) (every, most time.Duration) {
	most = minTTL / 8
	return min(time.Second, most), most
}

// embeddedRedisAddrs are where the embedded Redis listens: IPv4's
// loopback, or IPv6's on a host that has only that.
var embeddedRedisAddrs = []string{"127.0.0.1:0", "[::1]:0"}

// startLoopback starts mr on the first of addrs it can listen on.
func startLoopback(mr *miniredis.Miniredis, addrs ...string) error {
	var errs []error
	for _, a := range addrs {
		err := mr.StartAddr(a)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkSyncRoutes refuses Trigger manifests that route some event local
// mode depends on to no in-process sync handler: a change would be
// accepted (202 to Dovecot) and then go nowhere.
func checkSyncRoutes(cfg *broker.Config) error {
	probes, err := syncProbes()
	if err != nil {
		return err
	}
	for _, ev := range probes {
		if !routedToSync(cfg, ev) {
			return fmt.Errorf("triggers: no Trigger of Broker %q routes %s with priority %v to the sync function (%s): those events would be accepted and then go nowhere",
				cfg.Broker, ev.Type(), ev.Extensions()[contract.ExtPriority], strings.Join(localSyncSubscribers, " or "))
		}
	}
	return nil
}

// checkSyncTimeouts refuses a delivery timeout that would cut off the
// sync handler before its own --request-timeout: the lane would cancel a
// dsync still within its bound, and retry the event, each attempt cut off
// again at the same point until the Trigger's retries run out.
func checkSyncTimeouts(cfg *broker.Config, deliveryTimeout, requestTimeout time.Duration) error {
	for _, tr := range cfg.Triggers {
		if tr.Subscriber.URI != "" || !slices.Contains(localSyncSubscribers, tr.Subscriber.Ref) {
			continue
		}
		if t := tr.Delivery.Timeout; t != 0 && t <= requestTimeout {
			return fmt.Errorf("triggers: Trigger %s's delivery.timeout %s is not above request-timeout %s: each delivery would be cut off before the sync function answers, and retried",
				tr.Name, t, requestTimeout)
		}
		if tr.Delivery.Timeout == 0 && deliveryTimeout <= requestTimeout {
			return fmt.Errorf("delivery-timeout %s: want more than request-timeout %s, which the sync function may take for one event (Trigger %s sets no delivery.timeout): each delivery would be cut off before it answers, and retried",
				deliveryTimeout, requestTimeout, tr.Name)
		}
	}
	return nil
}

// syncProbes are an event of each kind the sync function takes: changes
// and replication requests of either priority, and a sweep request.
func syncProbes() ([]cloudevents.Event, error) {
	at := time.Now()
	var probes []cloudevents.Event
	for _, p := range []change.Priority{change.High, change.Low} {
		ev, err := contract.FromChange(change.Change{ID: "probe-" + string(p), User: "probe", Host: "probe", Time: at, Priority: p, Event: "probe"})
		if err != nil {
			return nil, err
		}
		probes = append(probes, ev)
	}
	for _, p := range []change.Priority{change.High, change.Low} {
		ev, err := contract.Requested(change.Request{ID: "probe", User: "probe", Time: at, Priority: p}, "probe", "dovewarden/local")
		if err != nil {
			return nil, err
		}
		probes = append(probes, ev)
	}
	ev, err := contract.SweepRequest("start", "dovewarden/local", false)
	if err != nil {
		return nil, err
	}
	return append(probes, ev), nil
}

func routedToSync(cfg *broker.Config, ev cloudevents.Event) bool {
	for _, tr := range cfg.Triggers {
		if tr.Subscriber.URI == "" && slices.Contains(localSyncSubscribers, tr.Subscriber.Ref) && tr.Filter.Match(ev) {
			return true
		}
	}
	return false
}

// ownEvents takes the sync function's own events (the replication.failed
// of an attempt it retries, its requests, the sweep's) into the broker in
// process, where a stop holds them with what the lanes hold
// (Broker.Emit): a spool file keeps an alert of an attempt that failed
// during the stop. The broker is made after the function it delivers to,
// and set here then.
type ownEvents struct{ b atomic.Pointer[broker.Broker] }

func (o *ownEvents) Send(ctx context.Context, ev cloudevents.Event) error {
	b := o.b.Load()
	if b == nil {
		return errors.New("the broker has not started")
	}
	// A full lane may take it a moment later, as the sync function's
	// posts to a Broker on a cluster are retried (3 times, from 50 ms,
	// within 2 s).
	delay := 50 * time.Millisecond
	for try := 0; ; try++ {
		err := b.Emit(ctx, ev)
		if err == nil || !errors.Is(err, broker.ErrQueueFull) || try == 3 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay *= 2
	}
}
