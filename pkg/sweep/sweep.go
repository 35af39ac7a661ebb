// Package sweep is the periodic sweep, the safety net behind the event
// path: Dovecot's exporter never retries, so changes get lost (ingest or
// the Broker down), and failed users must be retried later, as Dovecot
// 2.3's replicator did (replication_full_sync_interval, failed-user
// retries).
//
// A sweep lists every user of every source Dovecot host, adds the users
// Redis marks pending or failed, and asks for a replication of each user
// that needs one. It is cut into steps that each fit in one short request
// of the sync function: Step lists (the first step) or handles one batch
// and returns the cursor of the next step, which the sync function sends
// back to itself through the Broker as the reply to the sweep.requested
// event it got. The package knows nothing of HTTP or CloudEvents: the
// store, the doveadm lister and the request sender are interfaces.
package sweep

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// Reason says why the sweep requests a user; it is in the request's data
// (reason "sweep:<reason>") and a metric label.
type Reason string

// Reasons, checked in this order.
const (
	// ReasonFailed: the user's last replication failed after its last
	// attempt and the retry interval has passed since.
	ReasonFailed Reason = "failed"
	// ReasonPending: a change of the user is not yet covered by a
	// successful dsync (ingest could not hand it to the Broker, or it was
	// left over).
	ReasonPending Reason = "pending"
	// ReasonNever: the user was never replicated successfully.
	ReasonNever Reason = "never"
	// ReasonStale: the user's last full sync is older than the full-sync
	// interval.
	ReasonStale Reason = "stale"
	// ReasonRecovery: nothing else applies, and the user's last
	// successful dsync started before the last start of `dovewarden
	// local` with a lasting Redis (state.RecoveryKey): a change made while
	// it was down left no event, and one a crashed run had accepted was
	// lost with its lanes.
	ReasonRecovery Reason = "recovery"
)

// Reasons a candidate is skipped (metric label values).
const (
	SkipBadUser     = "bad_user"
	SkipExcluded    = "excluded"
	SkipInProgress  = "in_progress"
	SkipRetryNotDue = "retry_not_due"
)

// The reasons of the sweeps dovewarden asks for itself: at local mode's
// start, on its schedule (and the PingSource's, which may send none),
// after a start that found dead locks, and to retry failed users. Any
// other reason is an administrator's request (dovewarden sweep).
const (
	SweepReasonStart    = "start"
	SweepReasonSchedule = "schedule"
	SweepReasonRecovery = "recovery"
	SweepReasonRetry    = "retry"
)

// Asked reports whether a sweep of this reason was asked for by an
// administrator rather than by dovewarden itself.
func Asked(reason string) bool {
	switch reason {
	case "", SweepReasonStart, SweepReasonSchedule, SweepReasonRecovery, SweepReasonRetry:
		return false
	}
	return true
}

// Request is one replication the sweep asks for.
type Request struct {
	// Sweep is the sweep's id; with User it makes the event id, so a
	// request sent twice (a batch retried) is recognisable.
	Sweep string
	User  string
	// Host is the source host (a key of the host map); empty: the default.
	Host string
	// Full asks for a full sync: the user's periodic full sync is due.
	Full   bool
	Reason Reason
	// Time is when the sweep decided, by the sync function's clock
	// (state.Store.Now: Redis's TIME, never before an attempt start
	// already recorded): a dsync that started after it covers the
	// request.
	Time time.Time
}

// Sender hands one request to the Broker; it must be safe for concurrent
// use.
type Sender interface {
	Send(ctx context.Context, r Request) error
}

// Store is the sweep's state; *state.Store implements it.
type Store interface {
	SweepBegin(ctx context.Context, id, token, reason string, lockTTL, claimTTL time.Duration) (state.SweepStart, error)
	SweepAddUsers(ctx context.Context, id string, host int, users []string, ttl time.Duration) error
	SweepListed(ctx context.Context, id, token string, l state.SweepListing, lockTTL, usersTTL time.Duration) (int64, bool, error)
	SweepClaim(ctx context.Context, id string, offset int64, token string, lockTTL, claimTTL time.Duration) (state.SweepBatch, error)
	SweepUsers(ctx context.Context, id string, offset, n int64) ([]state.SweepEntry, error)
	SweepFacts(ctx context.Context, users []string) ([]state.SweepFacts, error)
	SweepCommit(ctx context.Context, a state.SweepCommitArgs) (bool, error)
	SweepRelease(ctx context.Context, token string) error
	SweepDrop(ctx context.Context, id string) error
	SweepStop(ctx context.Context, id string) (current string, err error)
	KnownUsers(ctx context.Context, n int, fn func([]string) error) error
	ForgetExcluded(ctx context.Context, users []string) (int64, error)
	RaiseRecovery(ctx context.Context, at time.Time, ttl time.Duration) (time.Time, error)
}

// Source is one Dovecot host whose users are listed.
type Source struct {
	// Name is the host-map key requests name; empty for the default host.
	Name     string
	Endpoint doveadm.Endpoint
}

// Sources returns the hosts to list: every named host of the map, and the
// default unless a named entry reaches the same doveadm (the usual
// "default is mail-a" setup would otherwise list mail-a twice).
func Sources(hm doveadm.HostMap) []Source {
	var out []Source
	seen := map[string]bool{}
	for _, h := range hm.Hosts() {
		ep := hm.Resolve(h)
		out = append(out, Source{Name: h, Endpoint: ep})
		seen[ep.Where()] = true
	}
	if !seen[hm.Default.Where()] {
		out = append(out, Source{Endpoint: hm.Default})
	}
	return out
}

// Where a sweep's users come from (Options.List).
const (
	// ListUserdb lists the userdb of every Dovecot host (doveadm user
	// '*').
	ListUserdb = "userdb"
	// ListKnown takes every user Redis keeps a record of instead: every
	// user replicated, or whose change reached dovewarden, since Redis
	// was new. It is for a userdb Dovecot cannot list (an LDAP or SQL
	// userdb without its iterate settings, a static one), as Dovecot
	// 2.3's replicator swept the users its replicator.db knew; a user
	// that never changed is not among them.
	ListKnown = "known"
)

// Options configure the sweep.
type Options struct {
	// FullSyncInterval is Dovecot's replication_full_sync_interval: a
	// user whose last full sync is older gets one. Zero: no periodic full
	// syncs (only pending and failed users are requested).
	FullSyncInterval time.Duration
	// FailedRetryInterval is how long a failed user waits before the
	// sweep retries it (Dovecot 2.3: 5 minutes).
	FailedRetryInterval time.Duration
	// BatchSize bounds the requests one step sends.
	BatchSize int
	// BatchInterval is the pause after a batch, inside the step, before
	// the continuation is returned: it paces the sweep.
	BatchInterval time.Duration
	// Budget bounds one step (one HTTP request of the sync function).
	Budget time.Duration
	// LockTTL is how long a sweep whose continuation got lost blocks new
	// sweeps.
	LockTTL time.Duration
	// ScanLimit bounds the candidates one step examines (most are up to
	// date); zero: 20 batches' worth.
	ScanLimit int
	// SendParallel bounds concurrent sends to the Broker.
	SendParallel int
	// List is where a sweep's users come from: ListUserdb (the default,
	// also for "") or ListKnown.
	List string
	// Username normalises the names doveadm lists as ingest normalises
	// the events' (--username-format), so that the sweep judges a user by
	// the records its dsyncs keep. Zero leaves names as listed.
	Username dovecot.UsernameFormat
}

// Defaults are the documented defaults.
var Defaults = Options{
	FullSyncInterval: 24 * time.Hour, FailedRetryInterval: 5 * time.Minute,
	BatchSize: 500, BatchInterval: time.Second, Budget: 20 * time.Second, LockTTL: 5 * time.Minute,
	SendParallel: 8,
}

// Cursor names the next step of a running sweep: its id and the position
// in its candidate list.
type Cursor struct {
	Sweep  string
	Offset int64
}

// Outcome is what one step did.
type Outcome string

// Outcomes.
const (
	// Started: a new sweep listed its users; Next is its first batch.
	Started Outcome = "started"
	// Running: another sweep runs; this request is covered by it.
	Running Outcome = "running"
	// Batched: one batch was done; Next is the following one.
	Batched Outcome = "batch"
	// Finished: the sweep is complete.
	Finished Outcome = "finished"
	// Stale: the cursor names a sweep that is over or was replaced, or
	// another sweep replaced it while the step worked on it.
	Stale Outcome = "stale"
	// Duplicate: the cursor's batch was done already (a redelivery).
	Duplicate Outcome = "duplicate"
	// Lost: the step took too long and its batch was taken over, or the
	// sweep's candidate list is gone (expired, evicted).
	Lost Outcome = "lost"
)

// Result is one step's outcome.
type Result struct {
	Outcome Outcome
	Sweep   string
	// Next is the continuation; nil when there is none.
	Next *Cursor
	// Requested counts requests sent; Examined candidates looked at.
	Requested, Examined int
}

// ErrBusy means another invocation works on this sweep step right now:
// answer so that the Broker tries again later (503).
var ErrBusy = errors.New("another invocation is working on this sweep step")

// Sweeper runs sweeps, one step per call.
type Sweeper struct {
	o       Options
	st      Store
	lister  doveadm.Lister
	sources []Source
	snd     Sender
	log     *slog.Logger
	m       *sweepMetrics
	// listPause is the first pause between tries of a listing.
	listPause time.Duration
}

// New makes a sweeper; zero options take Defaults (except
// FullSyncInterval, where zero means none).
func New(o Options, st Store, lister doveadm.Lister, sources []Source, snd Sender, reg prometheus.Registerer, log *slog.Logger) *Sweeper {
	d := Defaults
	if o.FailedRetryInterval <= 0 {
		o.FailedRetryInterval = d.FailedRetryInterval
	}
	if o.BatchSize <= 0 {
		o.BatchSize = d.BatchSize
	}
	if o.Budget <= 0 {
		o.Budget = d.Budget
	}
	if o.LockTTL <= 0 {
		o.LockTTL = d.LockTTL
	}
	if o.ScanLimit <= 0 {
		o.ScanLimit = 20 * o.BatchSize
	}
	if o.SendParallel <= 0 {
		o.SendParallel = d.SendParallel
	}
	m := newSweepMetrics(reg)
	// Every host's listing counters start at 0, before its first listing:
	// rate() and alerts then see a first failure.
	labels := []string{knownLabel}
	if o.List != ListKnown {
		labels = labels[:0]
		for _, src := range sources {
			labels = append(labels, hostLabel(src.Name))
		}
	}
	for _, l := range labels {
		m.listed.WithLabelValues(l)
		m.listFailures.WithLabelValues(l)
	}
	return &Sweeper{o: o, st: st, lister: lister, sources: sources, snd: snd, log: log, m: m, listPause: listPause}
}

// Step runs one step: without a cursor it starts a sweep (or finds one
// running), with one it does that batch. Errors other than ErrBusy mean
// the state store failed; nothing was acknowledged (503).
func (s *Sweeper) Step(ctx context.Context, reason string, c *Cursor) (Result, error) {
	if c == nil {
		return s.start(ctx, reason)
	}
	return s.batch(ctx, *c)
}

// Everyone has this sweep and the next ones request every user whose last
// successful dsync started before at (reason recovery), not only the
// pending, failed and stale ones: an administrator's sweep of every user
// (dovewarden sweep --all), after changes were lost without a mark. It
// raises the recovery time, which a running sweep that started before it
// does not cover: the next Step starts a new one. The recovery time
// expires after the full-sync interval, when every user it names is due
// for a full sync anyway (never, with periodic full syncs off).
func (s *Sweeper) Everyone(ctx context.Context, at time.Time) error {
	t, err := s.st.RaiseRecovery(ctx, at, s.o.FullSyncInterval)
	if err != nil {
		return err
	}
	s.log.Info("sweep of every user asked for: users whose last successful dsync started before the recovery time are requested", "recovery", t)
	return nil
}

// claimTTL outlives a step by a margin, so a step that dies frees its
// claim soon after its budget, and the Broker's redelivery takes over.
func (s *Sweeper) claimTTL() time.Duration { return s.o.Budget + 5*time.Second }

// chainSilence is how long after the last recorded batch a living chain of
// continuations has surely claimed the next one: a step, its pause and the
// Broker's delivery.
func (s *Sweeper) chainSilence() time.Duration { return s.claimTTL() + s.o.BatchInterval }

// usersTTL keeps a sweep's candidates while its lock may still be taken
// back by a late continuation.
func (s *Sweeper) usersTTL() time.Duration { return 2 * s.o.LockTTL }

// release gives up a claim after a failed step, on its own short context:
// the step's may be the one that ran out.
func (s *Sweeper) release(token string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.st.SweepRelease(ctx, token); err != nil {
		s.log.Warn("could not release the sweep claim; it expires by itself", "err", err)
	}
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newID names a sweep by its start, readable in logs and events, with a
// random tail so two instances never pick the same.
func newID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%s", now.UTC().Format("20060102T150405Z"), hex.EncodeToString(b[:]))
}
