package state

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// UserStatus is one user's replication status, as `doveadm replicator
// status` showed it: last success, last failure, pending, in progress,
// dsync state kept.
type UserStatus struct {
	User     string `json:"user"`
	Excluded bool   `json:"excluded"`

	// LastStart and LastSuccess bound the last successful dsync.
	LastStart       time.Time     `json:"last_start,omitzero"`
	LastSuccess     time.Time     `json:"last_success,omitzero"`
	LastSuccessHost string        `json:"last_success_host,omitempty"`
	LastDestination string        `json:"last_destination,omitempty"`
	LastDuration    time.Duration `json:"last_duration,omitempty"`
	LastFull        bool          `json:"last_full,omitempty"`
	// LastFullStart is the start of the last successful full dsync, from
	// which the sweep counts the full-sync interval (Dovecot's "last full
	// sync").
	LastFullStart time.Time `json:"last_full_start,omitzero"`

	LastFailure      time.Time `json:"last_failure,omitzero"`
	LastError        string    `json:"last_error,omitempty"`
	LastExitCode     int       `json:"last_exit_code,omitempty"`
	LastFailureClass string    `json:"last_failure_class,omitempty"`
	// ConsecutiveFailures counts failed attempts since the last success.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// Failed: the last replication failed after its last attempt; the
	// sweep retries the user. FailedSince is when that replication
	// failed (each later failure moves it; the sweep's retry interval
	// counts from it).
	Failed      bool      `json:"failed"`
	FailedSince time.Time `json:"failed_since,omitzero"`

	// PendingSince is the oldest change not yet covered by a successful
	// dsync (zero: nothing pending); PendingHost where it was seen.
	PendingSince time.Time `json:"pending_since,omitzero"`
	PendingHost  string    `json:"pending_host,omitempty"`

	// InProgress: a sync instance holds the user's lock.
	InProgress      bool      `json:"in_progress"`
	InProgressBy    string    `json:"in_progress_by,omitempty"`
	InProgressSince time.Time `json:"in_progress_since,omitzero"`
	InProgressHost  string    `json:"in_progress_host,omitempty"`

	// States maps each destination to the size in bytes of the dsync state
	// kept for it (the state itself is opaque).
	States map[string]int `json:"states,omitempty"`
}

// Status reads one user's status in one round trip.
func (s *Store) Status(ctx context.Context, user string) (UserStatus, error) {
	sts, err := s.statuses(ctx, []string{user})
	if err != nil {
		return UserStatus{}, fmt.Errorf("read status of %q from redis: %w", user, err)
	}
	return sts[0], nil
}

// statusCmds are the commands that read one user's status.
type statusCmds struct {
	fields          *redis.MapStringStringCmd
	states          *redis.Cmd
	pending, failed *redis.FloatCmd
	lock            *redis.IntCmd
	excluded        *redis.BoolCmd
}

// scriptStateSizes answers a user's dsync states as field, size pairs: a
// status shows their sizes alone, and the states themselves (up to 1 MiB
// each) of a thousand failed users would be a gigabyte to read.
var scriptStateSizes = newScript(`
local out = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
	out[#out + 1] = f
	out[#out + 1] = redis.call('HSTRLEN', KEYS[1], f)
end
return out
`)

// statuses reads users' statuses in one round trip: the status lists of
// up to 1,000 users cost one, not one a user, against a distant Redis.
func (s *Store) statuses(ctx context.Context, users []string) ([]UserStatus, error) {
	if len(users) == 0 {
		return nil, nil
	}
	cmds := make([]statusCmds, len(users))
	read := func() error {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, user := range users {
				cmds[i] = statusCmds{
					fields:   p.HGetAll(ctx, UserKey(user)),
					pending:  p.ZScore(ctx, PendingKey, user),
					failed:   p.ZScore(ctx, FailedKey, user),
					lock:     p.Exists(ctx, LockKey(user)),
					excluded: p.SIsMember(ctx, ExcludedKey, user),
					// In a pipeline, Script.Run cannot fall back to EVAL.
					states: scriptStateSizes.EvalSha(ctx, p, []string{StateKey(user)}),
				}
			}
			return nil
		})
		return err
	}
	err := read()
	// The pipeline's error is its first command's (redis.Nil, say): the
	// script's own tells a Redis that has not run it yet, or restarted.
	if redis.HasErrorPrefix(cmds[0].states.Err(), "NOSCRIPT") {
		if err = scriptStateSizes.Load(ctx, s.rdb).Err(); err == nil {
			err = read()
		}
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]UserStatus, len(users))
	for i, user := range users {
		out[i] = cmds[i].status(user)
	}
	return out, nil
}

func (c statusCmds) status(user string) UserStatus {
	f := c.fields.Val()
	st := UserStatus{
		User: user, Excluded: c.excluded.Val(),
		LastStart: msField(f[FieldLastStart]), LastSuccess: msField(f[FieldLastSuccess]),
		LastSuccessHost: f[FieldLastSuccessHost], LastDestination: f[FieldLastDestination],
		LastDuration: time.Duration(intField(f[FieldLastDurationMS])) * time.Millisecond,
		LastFull:     f[FieldLastFull] == "1", LastFullStart: msField(f[FieldLastFullStart]),
		LastFailure: msField(f[FieldLastFailure]), LastError: f[FieldLastError],
		LastExitCode: intField(f[FieldLastExitCode]), LastFailureClass: f[FieldLastClass],
		ConsecutiveFailures: intField(f[FieldFailures]),
		PendingHost:         f[FieldPendingHost],
		InProgress:          c.lock.Val() == 1,
	}
	if st.LastFull && st.LastFullStart.IsZero() { // a record from before last_full_start
		st.LastFullStart = st.LastStart
	}
	if c.pending.Err() == nil {
		st.PendingSince = time.UnixMilli(int64(c.pending.Val())).UTC()
	}
	if c.failed.Err() == nil {
		st.Failed, st.FailedSince = true, time.UnixMilli(int64(c.failed.Val())).UTC()
	}
	if st.InProgress {
		st.InProgressBy, st.InProgressHost = f[FieldInProgressBy], f[FieldInProgressHost]
		st.InProgressSince = msField(f[FieldInProgressSince])
	}
	if v, _ := c.states.Slice(); len(v) > 0 {
		st.States = map[string]int{}
		for i := 0; i+1 < len(v); i += 2 {
			dest, _ := v[i].(string)
			size, _ := v[i+1].(int64)
			st.States[dest] = int(size)
		}
	}
	return st
}

// Counts returns how many users are pending and how many failed, for the
// gauges.
func (s *Store) Counts(ctx context.Context) (pending, failed int64, err error) {
	var pc, fc *redis.IntCmd
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		pc, fc = p.ZCard(ctx, PendingKey), p.ZCard(ctx, FailedKey)
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("count pending and failed users in redis: %w", err)
	}
	return pc.Val(), fc.Val(), nil
}

// Exclude excludes users from replication; Include takes them back.
// Their pending and failed marks go with them, as in ReplaceExcluded.
func (s *Store) Exclude(ctx context.Context, users ...string) error {
	err := s.tx(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, ExcludedKey, anys(users)...)
		p.ZRem(ctx, FailedKey, anys(users)...)
		p.ZRem(ctx, PendingKey, anys(users)...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("exclude users in redis: %w", err)
	}
	return nil
}

// ForgetExcluded drops the pending and failed marks of those of users
// that are excluded (added to the set by hand, say, as on a cluster): no
// dsync will ever clear them. It returns how many marks it dropped.
func (s *Store) ForgetExcluded(ctx context.Context, users []string) (int64, error) {
	if len(users) == 0 {
		return 0, nil
	}
	n, err := scriptForgetExcluded.Run(ctx, s.rdb, []string{ExcludedKey, PendingKey, FailedKey}, anys(users)...).Int64()
	if err != nil {
		return 0, fmt.Errorf("drop the marks of excluded users in redis: %w", err)
	}
	return n, nil
}

// Include removes users from the excluded set.
func (s *Store) Include(ctx context.Context, users ...string) error {
	if err := s.rdb.SRem(ctx, ExcludedKey, anys(users)...).Err(); err != nil {
		return fmt.Errorf("include users in redis: %w", err)
	}
	return nil
}

// excludedChunk bounds the members of one SADD or ZREM in ReplaceExcluded.
const excludedChunk = 1000

// ReplaceExcluded makes users the whole excluded set, atomically (one
// MULTI/EXEC): users excluded before and not in users are taken back. The
// users in it also lose their failed and pending marks, so that the sweep
// and the failing-users gauge stop counting them; a user taken back is
// replicated at its next change or by the sweep, once its last success is
// older than the full-sync interval.
func (s *Store) ReplaceExcluded(ctx context.Context, users []string) error {
	err := s.tx(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, ExcludedKey)
		for i := 0; i < len(users); i += excludedChunk {
			chunk := anys(users[i:min(i+excludedChunk, len(users))])
			p.SAdd(ctx, ExcludedKey, chunk...)
			p.ZRem(ctx, FailedKey, chunk...)
			p.ZRem(ctx, PendingKey, chunk...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replace the excluded users in redis: %w", err)
	}
	return nil
}

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func intField(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func msField(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// Overview is the whole installation's replication status, as `doveadm
// replicator status` without a user showed it: how many users wait for a
// replication, how many failed, how many are excluded.
type Overview struct {
	// Pending users have a change no successful dsync covers yet;
	// OldestPending is the oldest such change (zero: none).
	Pending       int64     `json:"pending"`
	OldestPending time.Time `json:"oldest_pending,omitzero"`
	// Failed users' last replication failed after its last attempt.
	Failed int64 `json:"failed"`
	// InProgress users have an attempt running (Running).
	InProgress int64 `json:"in_progress"`
	Excluded   int64 `json:"excluded"`
	// Recovery is RecoveryKey's time (zero: none).
	Recovery time.Time `json:"recovery,omitzero"`
}

// Overview reads the counts in one round trip.
func (s *Store) Overview(ctx context.Context) (Overview, error) {
	var (
		pending, failed, excluded *redis.IntCmd
		oldest                    *redis.ZSliceCmd
		recovery                  *redis.StringCmd
	)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		pending, failed, excluded = p.ZCard(ctx, PendingKey), p.ZCard(ctx, FailedKey), p.SCard(ctx, ExcludedKey)
		oldest = p.ZRangeWithScores(ctx, PendingKey, 0, 0)
		recovery = p.Get(ctx, RecoveryKey)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return Overview{}, fmt.Errorf("read the overview from redis: %w", s.explain(err))
	}
	o := Overview{Pending: pending.Val(), Failed: failed.Val(), Excluded: excluded.Val(), Recovery: msField(recovery.Val())}
	if z := oldest.Val(); len(z) == 1 {
		o.OldestPending = time.UnixMilli(int64(z[0].Score)).UTC()
	}
	return o, nil
}

// scriptOldestPendingOnly: KEYS pending, failed. ARGV n. The score of
// the oldest of the first n pending users that is not failed, or false.
var scriptOldestPendingOnly = newScript(`
local z = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #z, 2 do
  if not redis.call('ZSCORE', KEYS[2], z[i]) then return z[i + 1] end
end
return false
`)

// OldestPendingOnly returns the change time of the oldest pending user
// that is not failed, among the n oldest pending ones, and whether there
// is one. A failed user stays pending too: its retry has its own time
// (NextFailure).
func (s *Store) OldestPendingOnly(ctx context.Context, n int) (time.Time, bool, error) {
	v, err := scriptOldestPendingOnly.Run(ctx, s.rdb, []string{PendingKey, FailedKey}, n).Text()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read pending users from redis: %w", err)
	}
	score, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read pending users from redis: score %q: %w", v, err)
	}
	return time.UnixMilli(int64(score)).UTC(), true, nil
}

// NextFailure returns the time of the oldest failure in FailedKey later
// than after (Redis's clock), and whether there is one: with a zero after,
// the oldest of all.
func (s *Store) NextFailure(ctx context.Context, after time.Time) (time.Time, bool, error) {
	min := "-inf"
	if !after.IsZero() {
		min = "(" + strconv.FormatInt(after.UnixMilli(), 10)
	}
	zs, err := s.rdb.ZRangeByScoreWithScores(ctx, FailedKey, &redis.ZRangeBy{Min: min, Max: "+inf", Count: 1}).Result()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read failed users from redis: %w", err)
	}
	if len(zs) == 0 {
		return time.Time{}, false, nil
	}
	return time.UnixMilli(int64(zs[0].Score)).UTC(), true, nil
}

// Running returns how many users have an attempt running, and up to
// limit of them, the one running longest first, each with its status
// record (who runs it, since when, from which host). RunningKey lists the
// attempts started and not released; one whose lock is gone (an owner
// that died: its lock expired) is left out, as is one that ended while
// this reads. It only reads, so that the status can be read from a
// replica too: the scripts drop such an entry (RunningKey).
func (s *Store) Running(ctx context.Context, limit int64) (int64, []UserStatus, error) {
	users, err := s.rdb.ZRange(ctx, RunningKey, 0, -1).Result()
	if err != nil {
		return 0, nil, fmt.Errorf("read running users from redis: %w", s.explain(err))
	}
	locks := make([]*redis.IntCmd, len(users))
	if len(users) > 0 {
		_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, u := range users {
				locks[i] = p.Exists(ctx, LockKey(u))
			}
			return nil
		})
		if err != nil {
			return 0, nil, fmt.Errorf("read running users from redis: %w", s.explain(err))
		}
	}
	var held []string
	for i, u := range users {
		if locks[i].Val() == 1 {
			held = append(held, u)
		}
	}
	sts, err := s.statuses(ctx, held[:min(int64(len(held)), max(limit, 0))])
	if err != nil {
		return 0, nil, fmt.Errorf("read the status of running users from redis: %w", s.explain(err))
	}
	n := int64(len(held))
	var out []UserStatus
	for _, st := range sts {
		if !st.InProgress {
			n-- // ended since the locks were read
			continue
		}
		out = append(out, st)
	}
	return n, out, nil
}

// Failed returns up to limit users whose last replication failed, the one
// whose failure is oldest first, each with its status record (the last
// error among it).
func (s *Store) Failed(ctx context.Context, limit int64) ([]UserStatus, error) {
	if limit <= 0 {
		return nil, nil
	}
	users, err := s.rdb.ZRange(ctx, FailedKey, 0, limit-1).Result()
	if err != nil {
		return nil, fmt.Errorf("read failed users from redis: %w", err)
	}
	out, err := s.statuses(ctx, users)
	if err != nil {
		return nil, fmt.Errorf("read the status of %d failed users from redis: %w", len(users), err)
	}
	return out, nil
}
