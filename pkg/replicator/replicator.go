// Package replicator decides, for each replication request, whether and how
// to run dsync: a per-user Redis lock renewed while dsync runs, coalescing
// (changes already covered, or merged into the running dsync's one extra
// run), excluded users, and retries by the exit-code policy table. It knows
// nothing of HTTP, Knative or CloudEvents: pkg/syncer adapts it.
package replicator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// Store is the shared state the decisions are made on; *state.Store
// implements it on Redis.
type Store interface {
	Begin(ctx context.Context, a state.BeginArgs) (state.Claim, error)
	Restart(ctx context.Context, user, token, destination string, ttl time.Duration) (state.Claim, error)
	Renew(ctx context.Context, user, token string, ttl time.Duration) (bool, error)
	Succeed(ctx context.Context, a state.SuccessArgs) (time.Time, state.Claim, error)
	Fail(ctx context.Context, a state.FailureArgs) (time.Time, error)
}

// Notifier hears of each failed attempt that the sync function retries
// itself (the final outcome is Replicate's result), and hands a user back
// to the Broker.
type Notifier interface {
	AttemptFailed(ctx context.Context, req change.Request, f change.Failure)
	// AskAgain asks for one more replication of req's user, with req's
	// priority, through the Broker: changes kept arriving during
	// --max-rounds dsyncs of one request, and those of the last one are
	// left. at is on Redis's clock, after every one of them: a dsync that
	// starts after it covers them. An error leaves them to the sweep.
	AskAgain(ctx context.Context, req change.Request, at time.Time) error
}

// Options tune the replicator. Zero values take the defaults of Defaults.
type Options struct {
	// Owner names this instance in the status record (in progress by).
	Owner string
	// LockTTL is the per-user lock's TTL; it is renewed every LockTTL/3
	// while dsync runs, so a dead owner's lock expires within LockTTL.
	LockTTL time.Duration
	// ClockSkew is the margin between Dovecot hosts' clocks (change times)
	// and Redis's clock (dsync starts): a change is covered only if it is
	// older than a successful dsync's start minus ClockSkew.
	ClockSkew time.Duration
	// MaxAttempts bounds dsync attempts per round (retries included).
	MaxAttempts int
	// Backoff is the delay before the first retry; it doubles up to
	// MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// RunAgainDelay is the short delay before re-running a dsync that
	// answered exit code 2.
	RunAgainDelay time.Duration
	// MaxRounds bounds the dsyncs one request runs back to back because
	// changes kept arriving; what remains waits for the next event or the
	// sweep.
	MaxRounds int
	// LockTimeout is passed to dsync (its own lock, a second guard).
	LockTimeout time.Duration
	// ExcludeMailboxes are left out of every dsync (dsync's -x).
	ExcludeMailboxes []string
	// CleanupTimeout bounds the Redis calls that record an outcome after
	// the request's context ended.
	CleanupTimeout time.Duration
}

// Defaults are the production defaults.
var Defaults = Options{
	LockTTL: 30 * time.Second, ClockSkew: 2 * time.Second, MaxAttempts: 4,
	Backoff: time.Second, MaxBackoff: 30 * time.Second, RunAgainDelay: 200 * time.Millisecond,
	MaxRounds: 5, LockTimeout: 30 * time.Second, CleanupTimeout: 5 * time.Second,
}

func (o Options) withDefaults() Options {
	d := Defaults
	if o.LockTTL <= 0 {
		o.LockTTL = d.LockTTL
	}
	if o.ClockSkew < 0 {
		o.ClockSkew = 0
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = d.MaxAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = d.Backoff
	}
	if o.MaxBackoff < o.Backoff {
		o.MaxBackoff = max(d.MaxBackoff, o.Backoff)
	}
	if o.RunAgainDelay <= 0 {
		o.RunAgainDelay = d.RunAgainDelay
	}
	if o.MaxRounds <= 0 {
		o.MaxRounds = d.MaxRounds
	}
	if o.CleanupTimeout <= 0 {
		o.CleanupTimeout = d.CleanupTimeout
	}
	return o
}

// Errors of Replicate that mean "nothing was acknowledged": the caller
// answers so that the request is delivered again (HTTP 503).
var (
	// ErrUnavailable: Redis could not be reached or answered an error.
	ErrUnavailable = errors.New("replication state unavailable")
	// ErrAborted: the dsync was cut off (lock lost, shutdown) before it
	// had an outcome; the lock is released and the change left pending.
	ErrAborted = errors.New("replication aborted")
)

// Replicator runs replication requests.
type Replicator struct {
	opts  Options
	store Store
	tr    doveadm.Transport
	hosts doveadm.HostMap
	// named are the host map's named entries, listed once.
	named  []string
	notify Notifier
	log    *slog.Logger
	m      *replMetrics
	// sleep waits d or until ctx ends; tests replace it.
	sleep   func(ctx context.Context, d time.Duration) error
	cover   *coverCache
	flights *flights
	// lostBegins are the tokens of Begins that got no answer.
	lostBegins lostBegins
	// unmapped are the hosts already reported as not in the host map.
	unmapped unmappedHosts
	// leftOutLogs bounds the warnings of states left out.
	leftOutLogs *lograte.Limiter
}

// coverCacheUsers bounds the in-process coverage cache (about 100 bytes a
// user).
const coverCacheUsers = 200_000

// New builds a replicator. notify may be nil.
func New(o Options, store Store, tr doveadm.Transport, hosts doveadm.HostMap, notify Notifier, reg prometheus.Registerer, log *slog.Logger) *Replicator {
	return &Replicator{opts: o.withDefaults(), store: store, tr: tr, hosts: hosts, named: hosts.Hosts(), notify: notify, log: log,
		m: newReplMetrics(reg), sleep: sleepCtx, cover: newCoverCache(coverCacheUsers), flights: newFlights(),
		leftOutLogs: lograte.PerMinute(5).Saying("")}
}

// Options returns the effective options.
func (r *Replicator) Options() Options { return r.opts }

// Replicate decides and, when needed, runs dsync for one request. The
// result's Outcome says what happened; a non-nil error (ErrUnavailable,
// ErrAborted) means nothing was acknowledged.
func (r *Replicator) Replicate(ctx context.Context, req change.Request) (change.Result, error) {
	if err := doveadm.ValidateUser(req.User); err != nil {
		return change.Result{}, err
	}
	if !req.Priority.Valid() {
		req.Priority = change.Low
	}
	ep := r.hosts.Resolve(req.Host)
	r.noteUnmapped(req.Host, ep)
	host := req.Host
	if host == "" {
		host = ep.Name
	}
	// A change ingest stamped with the Redis clock compares exactly with
	// dsync starts (same clock); a Dovecot host's time needs the margin.
	at, margin := req.Time, r.opts.ClockSkew
	if !req.Observed.IsZero() {
		at, margin = req.Observed, 0
		if !req.Full && r.cover.covers(req.User, at) {
			r.m.coalesced.WithLabelValues("covered").Inc()
			return change.Result{Outcome: change.Covered, User: req.User, Host: host, Destination: ep.Destination}, nil
		}
		if !req.Full && r.flights.merge(req.User, host, at) {
			r.m.coalesced.WithLabelValues("merged").Inc()
			return change.Result{Outcome: change.Coalesced, User: req.User, Host: host, Destination: ep.Destination}, nil
		}
	}
	// A redelivery of a request whose Begin got no answer sends that
	// Begin's token again: Redis may have run it late (lostBegins).
	key := lostBeginKey{user: req.User, host: host, destination: ep.Destination, at: at.UnixNano(), full: req.Full}
	token, again := r.lostBegins.take(key)
	if !again {
		token = newToken()
	}
	taken := time.Now()
	claim, err := r.store.Begin(ctx, state.BeginArgs{
		User: req.User, Host: host, Owner: r.opts.Owner, Token: token, Destination: ep.Destination,
		At: at, TTL: r.opts.LockTTL, Margin: margin, Full: req.Full,
	})
	if err != nil {
		r.lostBegins.put(key, token)
		return change.Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	res := change.Result{User: req.User, Host: host, Destination: ep.Destination}
	prio := string(req.Priority)
	switch claim.Decision {
	case state.Excluded:
		res.Outcome = change.Excluded
	case state.Covered:
		r.cover.record(req.User, claim.LastStart)
		res.Outcome = change.Covered
		r.m.coalesced.WithLabelValues("covered").Inc()
	case state.Busy:
		res.Outcome = change.Coalesced
		r.m.contention.WithLabelValues(prio).Inc()
		r.m.coalesced.WithLabelValues("merged").Inc()
	case state.Run:
		j := &job{r: r, req: req, ep: ep, host: host, token: token, taken: taken, res: res}
		return j.run(ctx, claim)
	default:
		return change.Result{}, fmt.Errorf("%w: unexpected decision %q", ErrUnavailable, claim.Decision)
	}
	return res, nil
}

// unmappedHostsMax bounds the hosts remembered as reported, so that
// requests naming ever new hosts cannot grow memory.
const unmappedHostsMax = 256

// unmappedHosts remembers the source hosts reported as missing from the
// host map, so that each is logged once.
type unmappedHosts struct {
	mu   sync.Mutex
	seen map[string]bool
}

// first reports whether host is seen for the first time (and remembers it
// while there is room).
func (u *unmappedHosts) first(host string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	key := strings.ToLower(host)
	if u.seen[key] || len(u.seen) >= unmappedHostsMax {
		return false
	}
	if u.seen == nil {
		u.seen = map[string]bool{}
	}
	u.seen[key] = true
	return true
}

// noteUnmapped logs, once per host, a request from a source host that a
// host map does not name: it syncs through the default host, and that
// host's own entry, if it was meant to have one, is never used. The
// usual cause is a key that is not the hostname Dovecot reports in its
// events (a short name for a fully qualified one). It is a warning when
// the default is itself one of the named hosts (then no host was meant to
// go without a name), otherwise a note: a map may leave the default's own
// host out.
func (r *Replicator) noteUnmapped(host string, ep doveadm.Endpoint) {
	// On every request: the cheap checks first, and no allocation.
	if host == "" || len(r.named) == 0 || r.hosts.Names(host) || !r.unmapped.first(host) {
		return
	}
	named := r.named
	level, msg := slog.LevelInfo, "changes from this host sync through the default host: the host map does not name it"
	if r.hosts.DefaultIsNamed() {
		level, msg = slog.LevelWarn, "changes from this host sync through the default host: the host map does not name it, and its keys must be the hostnames Dovecot reports in its events (or the exporter URL's ?host=NAME)"
	}
	r.log.Log(context.Background(), level, msg, "host", host, "host_map", named, "default", ep)
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
