package state

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys of the sync function. Every per-user key carries the user in a hash
// tag; the scripts below also touch the global sets, so they need a single
// Redis primary (standalone or Sentinel), not Redis Cluster.
const (
	// ExcludedKey is the set of users never replicated.
	ExcludedKey = Prefix + "excluded"
	// FailedKey is a sorted set of users whose last replication failed
	// after its last attempt, scored by the Unix milliseconds of that
	// failure. The sweep retries them.
	FailedKey = Prefix + "failed"
	// RunningKey is a sorted set of the users whose attempt runs, scored
	// by the Unix milliseconds of its start: the attempt's start adds the
	// user, the release of its lock removes it. An entry whose lock
	// expired instead (its owner died, or was cut off) stays until the
	// owner's late outcome, the user's next attempt, or an event that
	// finds the user excluded; Running leaves it out.
	RunningKey = Prefix + "running"
)

// LockKey is the per-user lock: a random token, with a TTL the owner renews
// while its dsync runs.
func LockKey(user string) string { return Prefix + "lock:{" + user + "}" }

// StateKey is the hash of a user's dsync states, one field per destination.
func StateKey(user string) string { return Prefix + "dsync:{" + user + "}" }

// Fields of UserKey written by the sync function (FieldPendingHost is
// ingest's, and the sync function's too).
const (
	FieldPendingLast     = "pending_last"  // ms: newest change left while a dsync ran
	FieldPendingFirst    = "pending_first" // ms: oldest such change: the pending time once that dsync succeeds
	FieldPendingCount    = "pending_count" // changes left while busy: merged into the next dsync, or covered by the running one
	FieldFullRequested   = "full_requested"
	FieldInProgressBy    = "inprogress_by"
	FieldInProgressSince = "inprogress_since" // ms: start of the running attempt
	FieldInProgressHost  = "inprogress_host"
	FieldLastStart       = "last_start"   // ms: start of the last successful dsync
	FieldLastSuccess     = "last_success" // ms: its end
	FieldLastSuccessHost = "last_success_host"
	FieldLastDestination = "last_destination"
	FieldLastDurationMS  = "last_duration_ms"
	FieldLastFull        = "last_full"
	FieldLastFullStart   = "last_full_start" // ms: start of the last successful full dsync
	FieldLastFailure     = "last_failure"    // ms
	FieldLastError       = "last_error"
	FieldLastExitCode    = "last_exit_code"
	FieldLastClass       = "last_failure_class"
	FieldFailures        = "failures" // consecutive failed attempts
)

// Decision is what a script decided for a user.
type Decision string

// Decisions.
const (
	// Run: the caller holds the lock and runs a dsync starting now.
	Run Decision = "run"
	// Covered: a successful dsync started after the change.
	Covered Decision = "covered"
	// Busy: another owner holds the lock; the change is left as a pending
	// mark for it.
	Busy Decision = "busy"
	// Excluded: the user is excluded from replication (Begin), or was
	// excluded while its attempt ran (Restart: the lock is released and
	// the user's marks dropped, no retry).
	Excluded Decision = "excluded"
	// Done: the dsync covered every pending mark; the lock is released.
	Done Decision = "done"
	// Left: marks newer than the dsync's start remain, but the caller may
	// not run again (rounds used up, or lock lost); the lock is released
	// and the marks wait for the next event or the sweep.
	Left Decision = "left"
	// Lost: the caller no longer holds the lock.
	Lost Decision = "lost"
)

// Claim is a script's answer.
type Claim struct {
	Decision Decision
	// Start is when the attempt starts (Run), by Redis's clock.
	Start time.Time
	// PendingSince is the oldest pending mark the attempt covers (Run).
	PendingSince time.Time
	// Merged counts changes left while busy that this attempt covers
	// (Run), or that the attempt just recorded covered (Done: they
	// happened before it started).
	Merged int
	// State is the stored dsync state for the destination (Run).
	State string
	// FullRequested: a full sync was asked for while busy (Run).
	FullRequested bool
	// LastStart is the start of the covering dsync (Covered).
	LastStart time.Time
	// Holder and HolderSince name the running owner (Busy).
	Holder      string
	HolderSince time.Time
}

// BeginArgs are the inputs of Begin.
type BeginArgs struct {
	User, Host, Owner, Token, Destination string
	// At is when the change happened; zero means now.
	At time.Time
	// TTL is the lock's time to live; Margin the clock-skew margin.
	TTL, Margin time.Duration
	Full        bool
}

// Begin decides, in one round trip, what to do with a change: excluded,
// already covered, busy (leave a pending mark) or run (lock taken).
func (s *Store) Begin(ctx context.Context, a BeginArgs) (Claim, error) {
	keys := []string{LockKey(a.User), UserKey(a.User), PendingKey, ExcludedKey, StateKey(a.User)}
	v, err := scriptBegin.Run(ctx, s.rdb, keys, a.User, a.Token, a.TTL.Milliseconds(), ms(a.At),
		a.Margin.Milliseconds(), a.Host, a.Owner, a.Destination, boolArg(a.Full)).Slice()
	if err != nil {
		return Claim{}, fmt.Errorf("begin sync of %q in redis: %w", a.User, err)
	}
	return parseClaim(v)
}

// Restart starts a new attempt (a retry) under a lock the caller holds,
// or answers Excluded, the lock released, for a user excluded meanwhile.
func (s *Store) Restart(ctx context.Context, user, token, destination string, ttl time.Duration) (Claim, error) {
	keys := []string{LockKey(user), UserKey(user), PendingKey, StateKey(user), FailedKey, ExcludedKey}
	v, err := scriptRestart.Run(ctx, s.rdb, keys, user, token, ttl.Milliseconds(), destination, callID()).Slice()
	if err != nil {
		return Claim{}, fmt.Errorf("restart sync of %q in redis: %w", user, err)
	}
	return parseClaim(v)
}

// Renew extends the lock's TTL if the caller still owns it.
func (s *Store) Renew(ctx context.Context, user, token string, ttl time.Duration) (bool, error) {
	n, err := scriptRenew.Run(ctx, s.rdb, []string{LockKey(user)}, token, ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("renew lock of %q in redis: %w", user, err)
	}
	return n == 1, nil
}

// SuccessArgs are the inputs of Succeed.
type SuccessArgs struct {
	User, Token, Host, Destination string
	// NewState is the state the dsync returned; empty keeps the old one,
	// unless DropState.
	NewState string
	// DropState: the dsync returned a state too large to keep; the old
	// one is deleted, so that the next dsync is a full one.
	DropState bool
	// Start is the Claim's Start of the successful attempt.
	Start time.Time
	// TTL is the lock's TTL for a rerun.
	TTL  time.Duration
	Full bool
	// MayRerun lets the script start another attempt at once (Run) when
	// marks newer than Start remain.
	MayRerun bool
	// Rerun says that the caller acknowledged changes newer than Start
	// itself (merged in-process): they count as such a mark.
	Rerun bool
}

// Succeed records a successful dsync and, atomically, clears the user's
// PendingKey entry when no mark was left since the attempt started (every
// remaining mark then describes a change before Start). It answers Done
// (lock released), Run (a mark newer than Start exists: a new attempt
// starts now under the same lock) or Left (one exists but MayRerun is
// false or the lock was lost; the marks wait for the next event or the
// sweep). A user excluded while the attempt ran gets Done, with its marks
// dropped: no rerun. end is Redis's time of the record.
func (s *Store) Succeed(ctx context.Context, a SuccessArgs) (end time.Time, next Claim, err error) {
	keys := []string{LockKey(a.User), UserKey(a.User), PendingKey, FailedKey, StateKey(a.User), ExcludedKey}
	v, err := scriptSucceed.Run(ctx, s.rdb, keys, a.User, a.Token, ms(a.Start),
		a.Destination, a.NewState, a.Host, boolArg(a.Full), a.TTL.Milliseconds(), boolArg(a.MayRerun), boolArg(a.Rerun), callID(), boolArg(a.DropState)).Slice()
	if err != nil {
		return time.Time{}, Claim{}, fmt.Errorf("record sync of %q in redis: %w", a.User, err)
	}
	if len(v) < 2 {
		return time.Time{}, Claim{}, fmt.Errorf("record sync of %q in redis: unexpected reply %v", a.User, v)
	}
	end = fromMS(v[1])
	next, err = parseClaim(append([]any{v[0]}, v[2:]...))
	return end, next, err
}

// FailureArgs are the inputs of Fail.
type FailureArgs struct {
	User, Token, Host string
	// Error is the failure, already free of secrets.
	Error, Class string
	ExitCode     int
	// At is the caller's own change; on Release it is left as a pending
	// mark, so nothing acknowledged is lost.
	At time.Time
	// Final marks the user failed for the sweep.
	Final bool
	// Release gives up the lock.
	Release bool
	// Full: a full sync was asked for (replication.requested with full)
	// and none has succeeded since. On Release it is asked for again, so
	// the next attempt, whoever runs it, is a full one.
	Full bool
	// Start is the failed attempt's Claim Start. With Token it names the
	// call, so that the same call sent again is recorded once.
	Start time.Time
	// Gone: the user no longer exists (doveadm's "no such user"). The
	// user's pending and failed marks are dropped instead of set, and so
	// are its dsync states and, with Release by the lock's owner, its
	// record (UserKey), as Dovecot 2.3's replicator removed such a user
	// with its state: its next change, or a sweep that lists it again,
	// brings it back, with a full sync (a user created again under the
	// name is another mailbox). A change marked since the attempt
	// started, or merged into it (Rerun), keeps its pending mark and the
	// record: the answer does not cover it, and the host it came from may
	// know the user. An answer whose lock another attempt took after
	// it (one that started later: Start) leaves every mark to that
	// attempt.
	Gone bool
	// Rerun: the owner merged changes seen after the attempt started
	// (as SuccessArgs.Rerun); only Gone looks at it.
	Rerun bool
	// Counted: this attempt's failure is already recorded (by a Fail
	// without Release, before a retry's backoff that was then cut off):
	// the call only releases, and the failure is not counted again.
	Counted bool
}

// Fail records a failed attempt; see FailureArgs. A user excluded while
// the attempt ran is left neither failed nor pending (Final, Release and
// Full are not marked), and its owner's lock is released with Release.
func (s *Store) Fail(ctx context.Context, a FailureArgs) (time.Time, error) {
	keys := []string{LockKey(a.User), UserKey(a.User), PendingKey, FailedKey, StateKey(a.User), ExcludedKey, SweepGoneKey}
	v, err := scriptFail.Run(ctx, s.rdb, keys, a.User, a.Token, ms(a.At), a.Error, a.ExitCode, a.Class,
		boolArg(a.Final), boolArg(a.Release), a.Host, boolArg(a.Full), ms(a.Start), boolArg(a.Gone), boolArg(a.Rerun), boolArg(a.Counted)).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("record failed sync of %q in redis: %w", a.User, err)
	}
	return time.UnixMilli(v).UTC(), nil
}

// CheckServer refuses a server dovewarden cannot keep its state on: a
// Redis older than 6.2, whose ZADD has no LT option; a Redis Cluster
// node, since the decision scripts touch a user's keys and the global
// sets together, which a cluster refuses (CROSSSLOT) on every decision;
// and a replica, which refuses every write (READONLY) or, made
// writable, loses them at its next resync: a URL that still names the old
// primary after a failover. It warns about a server that may evict
// dovewarden's keys: with a maxmemory and an eviction policy other than
// noeviction, Redis deletes keys when it is full, a user's lock among
// them (volatile-* policies take the keys with a TTL first: the locks),
// and then a second dsync of that user starts while one runs, and a
// pending or failed mark lost leaves its change to the next full sync. A
// server that does not answer INFO with these fields (miniredis, an ACL
// user without INFO) passes.
func (s *Store) CheckServer(ctx context.Context) (warnings []string, err error) {
	info, err := s.rdb.Info(ctx).Result()
	if err != nil {
		return nil, nil
	}
	return checkFields(infoFields(info))
}

// checkFields is CheckServer's reading of INFO's fields f.
func checkFields(f map[string]string) (warnings []string, err error) {
	if v := f["redis_version"]; tooOld(v) {
		return nil, fmt.Errorf("the server is Redis %s: dovewarden needs Redis 6.2 or later (its scripts use ZADD's LT option, which an older server refuses at every decision and every pending mark)", v)
	}
	if f["cluster_enabled"] == "1" {
		return nil, errors.New("the server is a Redis Cluster node: dovewarden needs one primary (standalone, or found through Sentinel), since its scripts touch a user's keys and the global sets together")
	}
	if f["role"] == "slave" {
		return nil, fmt.Errorf("the server is a replica (of %s), which refuses writes: name the primary, or the Sentinels with ?master_name= so that dovewarden follows a failover",
			net.JoinHostPort(f["master_host"], f["master_port"]))
	}
	if mayEvict(f) {
		warnings = append(warnings, fmt.Sprintf("the server may evict dovewarden's keys when it is full (maxmemory %s bytes, maxmemory-policy %s): "+
			"an evicted lock lets a second dsync of a user start while one runs, an evicted pending or failed mark leaves its change to the next full sync; "+
			"set maxmemory-policy noeviction on it (when full, it then refuses writes, and sync answers 503 until there is room)", f["maxmemory"], f["maxmemory_policy"]))
	}
	return warnings, nil
}

// tooOld: version v, INFO's redis_version, is before 6.2, the first with
// ZADD's LT option. One that does not read as MAJOR.MINOR passes.
func tooOld(v string) bool {
	major, rest, ok := strings.Cut(v, ".")
	minor, _, _ := strings.Cut(rest, ".")
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	if !ok || err1 != nil || err2 != nil {
		return false
	}
	return ma < 6 || ma == 6 && mi < 2
}

// mayEvict: INFO's fields say the server evicts keys when it is full.
func mayEvict(f map[string]string) bool {
	p := f["maxmemory_policy"]
	return p != "" && p != "noeviction" && f["maxmemory"] != "" && f["maxmemory"] != "0"
}

// MayEvict tells whether the server may now evict dovewarden's keys, as
// CheckServer warns at start: its settings can change at runtime (CONFIG
// SET, a managed Redis). ok is false when the server does not say (INFO
// refused or without these fields).
func (s *Store) MayEvict(ctx context.Context) (evict, ok bool) {
	info, err := s.rdb.Info(ctx, "memory").Result()
	if err != nil {
		return false, false
	}
	f := infoFields(info)
	if _, found := f["maxmemory_policy"]; !found {
		return false, false
	}
	return mayEvict(f), true
}

// infoFields reads INFO's "name:value" lines.
func infoFields(info string) map[string]string {
	f := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && !strings.HasPrefix(k, "#") {
			f[k] = v
		}
	}
	return f
}

// scripts are every Lua script of the package, in the order declared:
// newScript adds each one, so that LoadScripts cannot leave one out.
var scripts []*redis.Script

// newScript is redis.NewScript for the package's scripts: it records the
// script for LoadScripts.
func newScript(src string) *redis.Script {
	sc := redis.NewScript(src)
	scripts = append(scripts, sc)
	return sc
}

// LoadScripts loads every script into Redis's script cache, so that the
// first decision, sweep step or other call of each costs one round trip,
// not two (EVALSHA, NOSCRIPT, EVAL).
func (s *Store) LoadScripts(ctx context.Context) error {
	for _, sc := range scripts {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("load sync scripts into redis: %w", s.explain(err))
		}
	}
	return nil
}

func parseClaim(v []any) (Claim, error) {
	if len(v) == 0 {
		return Claim{}, errors.New("empty reply from redis script")
	}
	d, _ := v[0].(string)
	c := Claim{Decision: Decision(d)}
	at := func(i int) any {
		if i < len(v) {
			return v[i]
		}
		return nil
	}
	switch c.Decision {
	case Run:
		c.Start, c.PendingSince = fromMS(at(1)), fromMS(at(2))
		raiseLatestStart(c.Start)
		n, _ := at(3).(int64)
		c.Merged = int(n)
		c.State, _ = at(4).(string)
		f, _ := at(5).(int64)
		c.FullRequested = f == 1
	case Covered:
		c.LastStart = fromMS(at(1))
	case Busy:
		c.Holder, _ = at(1).(string)
		c.HolderSince = fromMS(at(2))
	case Done:
		n, _ := at(1).(int64)
		c.Merged = int(n)
	case Excluded, Left, Lost:
	default:
		return c, fmt.Errorf("unexpected decision %q from redis script", d)
	}
	return c, nil
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v any) time.Time {
	n, _ := v.(int64)
	if n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// callID names one call of a script that may start an attempt: the same
// call sent again by the client after a lost reply finds the attempt it
// started under this name, and answers its claim again.
func callID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
