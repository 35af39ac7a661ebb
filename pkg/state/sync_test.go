package state_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// backend is a Redis the scripts run on, with a way to let TTLs pass.
type backend struct {
	st     *state.Store
	rdb    *redis.Client
	expire func(d time.Duration)
}

// onBothRedis runs f against miniredis and a real redis-server: miniredis
// is what unit tests elsewhere use, the real server is what production
// runs, and the Lua scripts must behave the same on both.
func onBothRedis(t *testing.T, f func(t *testing.T, b backend)) {
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { rdb.Close() })
		f(t, backend{st: state.New(rdb), rdb: rdb, expire: mr.FastForward})
	})
	t.Run("real-redis", func(t *testing.T) {
		srv := redistest.Start(t)
		rdb := srv.Client(t)
		f(t, backend{st: state.New(rdb), rdb: rdb, expire: func(d time.Duration) { time.Sleep(d + 20*time.Millisecond) }})
	})
}

var ctx = context.Background()

func begin(t *testing.T, b backend, token string, at time.Time) state.Claim {
	t.Helper()
	c, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "inst-" + token, Token: token,
		Destination: "tcp:b:1", At: at, TTL: time.Second, Margin: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func succeed(t *testing.T, b backend, token string, start time.Time, rerun bool) state.Claim {
	t.Helper()
	_, next, err := b.st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: token, Host: "mail-a", Destination: "tcp:b:1",
		NewState: "state-after-" + token, Start: start, TTL: time.Second, MayRerun: rerun})
	if err != nil {
		t.Fatal(err)
	}
	return next
}

func pendingScore(t *testing.T, b backend) (float64, bool) {
	t.Helper()
	s, err := b.rdb.ZScore(ctx, state.PendingKey, "u1").Result()
	if err == redis.Nil {
		return 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return s, true
}

func TestRedisScripts_RunBusyRerunDone(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		first := begin(t, b, "A", time.Now())
		if first.Decision != state.Run || first.Start.IsZero() || first.State != "" {
			t.Fatalf("first claim %+v", first)
		}
		if ttl := b.rdb.PTTL(ctx, state.LockKey("u1")).Val(); ttl <= 0 || ttl > time.Second {
			t.Fatalf("lock TTL %v", ttl)
		}
		// Three changes while A runs, each its own call: pending marks,
		// not dsyncs.
		time.Sleep(5 * time.Millisecond)
		for i := range 3 {
			busy := begin(t, b, fmt.Sprint("B", i), time.Now())
			if busy.Decision != state.Busy || busy.Holder != "inst-A" || !busy.HolderSince.Equal(first.Start) {
				t.Fatalf("busy claim %+v", busy)
			}
		}
		if _, ok := pendingScore(t, b); !ok {
			t.Fatal("no pending mark for the changes left while busy")
		}
		again := succeed(t, b, "A", first.Start, true)
		if again.Decision != state.Run || again.Merged != 3 || again.State != "state-after-A" || again.Start.Before(first.Start) {
			t.Fatalf("after the first dsync: %+v, want one more run covering 3 changes with the new state", again)
		}
		done := succeed(t, b, "A", again.Start, true)
		if done.Decision != state.Done {
			t.Fatalf("after the rerun: %+v", done)
		}
		if _, ok := pendingScore(t, b); ok {
			t.Error("pending mark not cleared by a dsync that started after it")
		}
		if b.rdb.Exists(ctx, state.LockKey("u1")).Val() != 0 {
			t.Error("lock not released")
		}
		st, err := b.st.Status(ctx, "u1")
		if err != nil || !st.LastStart.Equal(again.Start) || st.InProgress || st.States["tcp:b:1"] == 0 || st.LastSuccessHost != "mail-a" {
			t.Errorf("status %+v, %v", st, err)
		}
	})
}

func TestRedisScripts_CoveredChangeNeedsNoDsync(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		before := time.Now().Add(-time.Second)
		c := begin(t, b, "A", time.Time{})
		succeed(t, b, "A", c.Start, true)
		if got := begin(t, b, "B", before); got.Decision != state.Covered || !got.LastStart.Equal(c.Start) {
			t.Errorf("change before the last start: %+v, want covered", got)
		}
		// Within the clock-skew margin of the start: not covered.
		if got := begin(t, b, "B", c.Start.Add(-50*time.Millisecond)); got.Decision != state.Run {
			t.Errorf("change within the margin: %+v, want run", got)
		}
	})
}

func TestRedisScripts_MarkCoveredByTheRunningAttemptCausesNoRerun(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		c := begin(t, b, "A", time.Time{})
		// An old change, redelivered late, while A runs: A's dsync covers it.
		if got := begin(t, b, "B", c.Start.Add(-time.Minute)); got.Decision != state.Busy {
			t.Fatalf("%+v", got)
		}
		if next := succeed(t, b, "A", c.Start, true); next.Decision != state.Done {
			t.Errorf("after the dsync: %+v, want done", next)
		}
		if _, ok := pendingScore(t, b); ok {
			t.Error("covered mark not cleared")
		}
	})
}

func TestRedisScripts_IngestMarkDuringDsyncCausesRerun(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		// An old ingest mark, then a dsync starts, then ingest marks again
		// (the Broker was down): the old score stays (ZADD LT), but the
		// new mark must not be cleared.
		if err := b.st.MarkPending(ctx, "u1", "mail-a", time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		c := begin(t, b, "A", time.Time{})
		if c.PendingSince.IsZero() {
			t.Fatalf("claim does not report the oldest pending change: %+v", c)
		}
		if err := b.st.MarkPending(ctx, "u1", "mail-b", time.Now()); err != nil {
			t.Fatal(err)
		}
		if next := succeed(t, b, "A", c.Start, false); next.Decision != state.Left {
			t.Fatalf("%+v, want left (newer mark, no rerun allowed)", next)
		}
		if _, ok := pendingScore(t, b); !ok {
			t.Fatal("the ingest mark made during the dsync was cleared")
		}
		pu, err := b.st.Pending(ctx, 10)
		if err != nil || len(pu) != 1 || pu[0].Host != "mail-b" {
			t.Errorf("Pending() = %+v, %v", pu, err)
		}
	})
}

// A user pending while its dsync runs shows the dsync's host: the
// attempt's start cleared the host of the change it took over.
func TestPending_HostOfTheRunningAttempt(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		begin(t, b, "A", time.Now().Add(-time.Second))
		pu, err := b.st.Pending(ctx, 10)
		if err != nil || len(pu) != 1 || pu[0].Host != "mail-a" {
			t.Errorf("Pending() = %+v, %v: want u1 from mail-a, where its dsync runs", pu, err)
		}
	})
}

func TestRedisScripts_FailReleaseKeepsTheChangeMarked(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		at := time.Now().Add(-time.Second)
		c := begin(t, b, "A", at)
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, At: at}); err != nil {
			t.Fatal(err)
		}
		if b.rdb.Exists(ctx, state.LockKey("u1")).Val() != 1 {
			t.Fatal("a non-releasing failure released the lock")
		}
		if r, err := b.st.Restart(ctx, "u1", "A", "tcp:b:1", time.Second); err != nil || r.Decision != state.Run || r.Start.Before(c.Start) {
			t.Fatalf("restart %+v, %v", r, err)
		}
		if r, _ := b.st.Restart(ctx, "u1", "someone-else", "tcp:b:1", time.Second); r.Decision != state.Lost {
			t.Fatalf("restart by a non-owner: %+v", r)
		}
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, At: at, Final: true, Release: true}); err != nil {
			t.Fatal(err)
		}
		st, err := b.st.Status(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Failed || st.ConsecutiveFailures != 2 || st.LastExitCode != 75 || st.LastFailureClass != "tempfail" ||
			st.InProgress || st.PendingSince.UnixMilli() != at.UnixMilli() || st.PendingHost != "mail-a" {
			t.Errorf("status after the final failure: %+v", st)
		}
		// The next success clears failed and pending.
		c = begin(t, b, "C", time.Time{})
		succeed(t, b, "C", c.Start, true)
		st, _ = b.st.Status(ctx, "u1")
		if st.Failed || st.ConsecutiveFailures != 0 || !st.PendingSince.IsZero() {
			t.Errorf("status after a later success: %+v", st)
		}
	})
}

// TestRedisScripts_ASuccessAfterTheLockExpired: an owner whose lock
// expired while its dsync ran (a process stalled, or cut off from Redis)
// records its success late, after another owner took the lock.
func TestRedisScripts_ASuccessAfterTheLockExpired(t *testing.T) {
	late := func(t *testing.T, b backend, a state.Claim, rerun bool) state.Claim {
		t.Helper()
		_, next, err := b.st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "A", Host: "mail-a", Destination: "tcp:b:1",
			Start: a.Start, TTL: time.Second, MayRerun: true, Rerun: rerun})
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	onBothRedis(t, func(t *testing.T, b backend) {
		// Changes A merged in-process after its start: B's dsync, done
		// before them, cleared the pending set, so A must mark them.
		a := begin(t, b, "A", time.Time{})
		b.expire(time.Second)
		c := begin(t, b, "B", time.Time{})
		if c.Decision != state.Run || succeed(t, b, "B", c.Start, true).Decision != state.Done {
			t.Fatalf("B: %+v", c)
		}
		if _, ok := pendingScore(t, b); ok {
			t.Fatal("B's success left the user pending")
		}
		if next := late(t, b, a, false); next.Decision != state.Left {
			t.Fatalf("A's late success with nothing merged: %+v, want left (the lock is not A's)", next)
		}
		if _, ok := pendingScore(t, b); ok {
			t.Error("A's late success with nothing merged marked the user pending")
		}
		if next := late(t, b, a, true); next.Decision != state.Left {
			t.Fatalf("A's late success with changes merged: %+v, want left", next)
		}
		score, ok := pendingScore(t, b)
		if !ok || int64(score) != a.Start.UnixMilli() {
			t.Errorf("pending %v %v: want the user marked since A's start %d", score, ok, a.Start.UnixMilli())
		}
		if b.rdb.Exists(ctx, state.LockKey("u1")).Val() != 0 {
			t.Error("a lock appeared")
		}

		// A failure of the next owner, after A's start, is newer than A's
		// success: the user stays failed. (Some real time passes: B's
		// start is at least the TTL after A's, and miniredis's clock does
		// not move with its TTLs.)
		a = begin(t, b, "A", time.Time{})
		b.expire(time.Second)
		time.Sleep(2 * time.Millisecond)
		c = begin(t, b, "B", time.Time{})
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "B", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, Final: true, Release: true}); err != nil || c.Decision != state.Run {
			t.Fatalf("B: %+v, %v", c, err)
		}
		late(t, b, a, false)
		st, err := b.st.Status(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Failed || st.ConsecutiveFailures != 1 || st.PendingSince.IsZero() {
			t.Errorf("status after B's failure and A's late success: %+v, want failed and pending", st)
		}

		// A failure recorded in the millisecond A's attempt started is
		// older than A's start (its attempt held the lock before A):
		// A's late success clears it.
		a = begin(t, b, "A", time.Time{})
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "P", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, Final: true}); err != nil {
			t.Fatal(err)
		}
		b.rdb.HSet(ctx, state.UserKey("u1"), "last_failure", a.Start.UnixMilli())
		b.expire(time.Second)
		late(t, b, a, false)
		if st, _ = b.st.Status(ctx, "u1"); st.Failed || st.ConsecutiveFailures != 0 {
			t.Errorf("status after a failure in the millisecond of A's start and A's late success: %+v, want not failed", st)
		}
	})
}

// TestRedisScripts_ALateSuccessKeepsANewerAttemptsState: an owner whose
// lock expired while its dsync ran records its success after another
// attempt, which started later, succeeded: the dsync state stays the newer
// attempt's, whether the late one brings a state or drops it. After a
// later attempt's failure instead, the late state is the newest there is.
func TestRedisScripts_ALateSuccessKeepsANewerAttemptsState(t *testing.T) {
	late := func(t *testing.T, b backend, a state.Claim, drop bool) {
		t.Helper()
		args := state.SuccessArgs{User: "u1", Token: "A", Host: "mail-a", Destination: "tcp:b:1",
			NewState: "state-after-A", Start: a.Start, TTL: time.Second}
		if drop {
			args.NewState, args.DropState = "", true
		}
		if _, _, err := b.st.Succeed(ctx, args); err != nil {
			t.Fatal(err)
		}
	}
	dsyncState := func(t *testing.T, b backend) string {
		t.Helper()
		v, err := b.rdb.HGet(ctx, state.StateKey("u1"), "tcp:b:1").Result()
		if err == redis.Nil {
			return "(none)"
		}
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	onBothRedis(t, func(t *testing.T, b backend) {
		for _, drop := range []bool{false, true} {
			// (Some real time passes: C's start is after A's, and
			// miniredis's clock does not move with its TTLs.)
			a := begin(t, b, "A", time.Time{})
			b.expire(time.Second)
			time.Sleep(2 * time.Millisecond)
			c := begin(t, b, "C", time.Time{})
			if c.Decision != state.Run || succeed(t, b, "C", c.Start, false).Decision != state.Done {
				t.Fatalf("C: %+v", c)
			}
			late(t, b, a, drop)
			if got := dsyncState(t, b); got != "state-after-C" {
				t.Errorf("dsync state after C's success and A's late one (drop %v): %q, want C's", drop, got)
			}
		}

		a := begin(t, b, "A", time.Time{})
		b.expire(time.Second)
		time.Sleep(2 * time.Millisecond)
		c := begin(t, b, "D", time.Time{})
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "D", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, Final: true, Release: true, Start: c.Start}); err != nil || c.Decision != state.Run {
			t.Fatalf("D: %+v, %v", c, err)
		}
		late(t, b, a, false)
		if got := dsyncState(t, b); got != "state-after-A" {
			t.Errorf("dsync state after D's failure and A's late success: %q, want A's", got)
		}
	})
}

// TestRedisScripts_AFullRequestStaysUntilAFullSyncIsDone: a full sync
// asked for while the user was busy passes to the owner's next attempt;
// if that attempt gives up the lock without succeeding, the next owner's
// attempt is a full one.
func TestRedisScripts_AFullRequestStaysUntilAFullSyncIsDone(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		a := begin(t, b, "A", time.Time{})
		busy, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "x", Token: "X",
			Destination: "tcp:b:1", TTL: time.Second, Full: true})
		if err != nil || busy.Decision != state.Busy {
			t.Fatalf("%+v %v", busy, err)
		}
		next := succeed(t, b, "A", a.Start, true)
		if next.Decision != state.Run || !next.FullRequested {
			t.Fatalf("rerun %+v, want the full request", next)
		}
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "lock lost",
			Class: "lock", Release: true, Full: true}); err != nil {
			t.Fatal(err)
		}
		c := begin(t, b, "C", time.Time{})
		if c.Decision != state.Run || !c.FullRequested {
			t.Fatalf("next owner's claim %+v: the full request is lost", c)
		}
		if done := succeed(t, b, "C", c.Start, true); done.Decision != state.Done {
			t.Fatalf("C: %+v", done)
		}
		if c = begin(t, b, "D", time.Time{}); c.FullRequested {
			t.Errorf("after a full sync succeeded: %+v, want no full request", c)
		}
	})
}

func TestRedisScripts_LockOnlyItsOwnerRenewsAndItExpires(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		begin(t, b, "A", time.Time{})
		if ok, err := b.st.Renew(ctx, "u1", "B", time.Second); ok || err != nil {
			t.Errorf("renew by a non-owner = %v, %v", ok, err)
		}
		if ok, err := b.st.Renew(ctx, "u1", "A", 300*time.Millisecond); !ok || err != nil {
			t.Errorf("renew by the owner = %v, %v", ok, err)
		}
		// A non-owner's success must not release A's lock.
		succeed(t, b, "B", time.Now(), true)
		if b.rdb.Get(ctx, state.LockKey("u1")).Val() != "A" {
			t.Fatal("a non-owner released the lock")
		}
		b.expire(300 * time.Millisecond)
		if c := begin(t, b, "B", time.Time{}); c.Decision != state.Run {
			t.Errorf("after the TTL: %+v, want run", c)
		}
	})
}

func TestRedisScripts_ExcludedAndFullRequest(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		if err := b.st.Exclude(ctx, "u1"); err != nil {
			t.Fatal(err)
		}
		if c := begin(t, b, "A", time.Time{}); c.Decision != state.Excluded {
			t.Fatalf("%+v", c)
		}
		if err := b.st.Include(ctx, "u1"); err != nil {
			t.Fatal(err)
		}
		c := begin(t, b, "A", time.Time{})
		// A full sync asked for while A runs an incremental one.
		full, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Token: "B", Destination: "tcp:b:1", TTL: time.Second, Full: true,
			At: c.Start.Add(-time.Hour)})
		if err != nil || full.Decision != state.Busy {
			t.Fatalf("%+v %v", full, err)
		}
		if next := succeed(t, b, "A", c.Start, true); next.Decision != state.Run || !next.FullRequested {
			t.Errorf("%+v, want a rerun as a full sync", next)
		}
		p, f, err := b.st.Counts(ctx)
		if err != nil || p != 1 || f != 0 {
			t.Errorf("counts %d %d %v", p, f, err)
		}
	})
}

func TestReplaceExcluded(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		if err := b.st.Exclude(ctx, "old", "u1"); err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{state.FailedKey, state.PendingKey} {
			for _, u := range []string{"u1", "u2", "other"} {
				b.rdb.ZAdd(ctx, key, redis.Z{Score: 1, Member: u})
			}
		}
		if err := b.st.ReplaceExcluded(ctx, []string{"u1", "u2"}); err != nil {
			t.Fatal(err)
		}
		got, err := b.rdb.SMembers(ctx, state.ExcludedKey).Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, []string{"u1", "u2"}) {
			t.Errorf("excluded %q, want [u1 u2]: old is taken back", got)
		}
		for _, key := range []string{state.FailedKey, state.PendingKey} {
			if left := b.rdb.ZRange(ctx, key, 0, -1).Val(); !slices.Equal(left, []string{"other"}) {
				t.Errorf("%s holds %q, want only the user still replicated", key, left)
			}
		}
		if c := begin(t, b, "A", time.Time{}); c.Decision != state.Excluded {
			t.Errorf("u1 after the replacement: %+v", c)
		}

		many := make([]string, 2500)
		for i := range many {
			many[i] = fmt.Sprintf("user%04d", i)
		}
		if err := b.st.ReplaceExcluded(ctx, many); err != nil {
			t.Fatal(err)
		}
		if n := b.rdb.SCard(ctx, state.ExcludedKey).Val(); n != 2500 {
			t.Errorf("%d excluded after replacing with 2,500 users", n)
		}
		if err := b.st.ReplaceExcluded(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if n := b.rdb.Exists(ctx, state.ExcludedKey).Val(); n != 0 {
			t.Errorf("an empty list left the set in place")
		}
		if c := begin(t, b, "A", time.Time{}); c.Decision != state.Run {
			t.Errorf("u1 taken back: %+v, want run", c)
		}
	})
}

// clockedStore is a Store on a miniredis whose clock (TIME) is set to at
// and moved by the test (a real server's clock cannot be set).
func clockedStore(t *testing.T, at time.Time) (*miniredis.Miniredis, *state.Store) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	mr.SetTime(at)
	return mr, state.New(rdb)
}

// TestNow_NeverBeforeARecordedStart: Redis's TIME steps back (an NTP step,
// a failover to a host whose clock lags) after a short dsync succeeded. A
// change made after it, stamped with Now, still compares as after that
// dsync's start: not covered by it. (miniredis only: a real server's clock
// cannot be set.)
func TestNow_NeverBeforeARecordedStart(t *testing.T) {
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	mr, st := clockedStore(t, t0)
	c, err := st.Begin(ctx, state.BeginArgs{User: "u1", Token: "a", Destination: "d", At: t0.Add(-time.Second), TTL: 30 * time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatal(c, err)
	}
	mr.SetTime(t0.Add(300 * time.Millisecond))
	if _, n, err := st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "a", Destination: "d", Start: c.Start, TTL: 30 * time.Second}); err != nil || n.Decision != state.Done {
		t.Fatal(n, err)
	}
	mr.SetTime(t0.Add(-500 * time.Millisecond)) // the clock steps back 800 ms
	at, err := st.Now(ctx)
	if err != nil || at.Before(c.Start) {
		t.Fatalf("Now() = %v, %v: before the recorded start %v", at, err, c.Start)
	}
	b, err := st.Begin(ctx, state.BeginArgs{User: "u1", Token: "b", Destination: "d", At: at, TTL: 30 * time.Second})
	if err != nil || b.Decision != state.Run {
		t.Fatalf("a change stamped after the dsync: %+v, %v; want run, not covered", b, err)
	}
	// Once TIME is past the mark again, Now follows it.
	mr.SetTime(t0.Add(time.Hour))
	if at, err := st.Now(ctx); err != nil || !at.Equal(t0.Add(time.Hour)) {
		t.Errorf("Now() = %v, %v; want TIME again, %v", at, err, t0.Add(time.Hour))
	}
}

// A failure of the attempt that took over from an owner whose lock
// expired is newer news than that owner's late success, also when Redis's
// TIME stepped back in between: the user stays failed. The failure was
// stamped with TIME and compared with the late attempt's start, taken on
// the clock that never goes below a recorded start, so the failure looked
// older and the late success cleared it. (miniredis only: a real server's
// clock cannot be set.)
func TestLateSuccess_AfterANewerFailureAndAStepBack(t *testing.T) {
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	mr, st := clockedStore(t, t0)
	a, err := st.Begin(ctx, state.BeginArgs{User: "u1", Token: "A", Destination: "d", At: t0, TTL: time.Second})
	if err != nil || a.Decision != state.Run {
		t.Fatal(a, err)
	}
	mr.FastForward(2 * time.Second) // A's lock expires while its dsync runs
	mr.SetTime(t0.Add(5 * time.Millisecond))
	b, err := st.Begin(ctx, state.BeginArgs{User: "u1", Token: "B", Destination: "d", At: t0.Add(5 * time.Millisecond), TTL: time.Second})
	if err != nil || b.Decision != state.Run || !b.Start.After(a.Start) {
		t.Fatalf("B took over: %+v, %v; want run, after A's start", b, err)
	}
	mr.SetTime(t0.Add(-100 * time.Millisecond)) // TIME steps back
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "B", Error: "exit code 75",
		Class: "tempfail", ExitCode: 75, Start: b.Start, Final: true, Release: true}); err != nil {
		t.Fatal(err)
	}
	if _, n, err := st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "A", Destination: "d", Start: a.Start, TTL: time.Second}); err != nil || n.Decision != state.Left {
		t.Fatalf("A's late success: %+v, %v; want left (the lock is not A's)", n, err)
	}
	s, err := st.Status(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Failed || s.ConsecutiveFailures != 1 || s.PendingSince.IsZero() {
		t.Errorf("status after B's failure and A's late success: %+v, want failed once and pending", s)
	}
}

// TestLatestStart: the latest attempt start a script answered with is the
// process's view of the clock's mark.
func TestLatestStart(t *testing.T) {
	ahead := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	mr, st := clockedStore(t, ahead)
	c, err := st.Begin(ctx, state.BeginArgs{User: "u1", Token: "a", Destination: "d", TTL: time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatal(c, err)
	}
	mr.SetTime(ahead.Add(-2 * time.Hour))
	if _, err := st.Begin(ctx, state.BeginArgs{User: "u2", Token: "b", Destination: "d", TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	if got := state.LatestStart(); !got.Equal(ahead) {
		t.Errorf("LatestStart() = %v, want %v (it never goes back)", got, ahead)
	}
	if v, err := mr.Get(state.ClockKey); err != nil || v != strconv.FormatInt(ahead.UnixMilli(), 10) {
		t.Errorf("%s = %q, %v; want %d", state.ClockKey, v, err, ahead.UnixMilli())
	}
}

// TestBegin_ExcludedDropsTheMarks: a change of a user excluded by hand
// (SADD) is answered excluded, and the user's pending and failed marks go:
// no dsync will ever clear them.
func TestBegin_ExcludedDropsTheMarks(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		at := time.Now().Add(-time.Minute)
		if err := b.st.MarkPending(ctx, "u1", "mail-a", at); err != nil {
			t.Fatal(err)
		}
		b.rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: float64(at.UnixMilli()), Member: "u1"})
		b.rdb.SAdd(ctx, state.ExcludedKey, "u1")
		if c := begin(t, b, "A", time.Now()); c.Decision != state.Excluded {
			t.Fatalf("begin: %+v, want excluded", c)
		}
		if o, err := b.st.Overview(ctx); err != nil || o.Pending != 0 || o.Failed != 0 {
			t.Errorf("overview %+v, %v: want the excluded user neither pending nor failed", o, err)
		}
	})
}

// TestRedisScripts_GoneKeepsAChangeMarkedDuringTheAttempt: an attempt
// answered "no such user" (exit code 67) by its source host covers no
// change that arrived while it ran: one from another host (the user moved
// there, docs/operations.md) stays pending, with its host and the user's
// record, for the next event or the sweep. Without such a change the
// owner drops everything, as for a deleted user.
func TestRedisScripts_GoneKeepsAChangeMarkedDuringTheAttempt(t *testing.T) {
	gone := func(t *testing.T, b backend, token, host string) {
		t.Helper()
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: token, Host: host, Error: "exit code 67",
			Class: "no_user", ExitCode: 67, Final: true, Release: true, Gone: true}); err != nil {
			t.Fatal(err)
		}
	}
	onBothRedis(t, func(t *testing.T, b backend) {
		c := begin(t, b, "A", time.Time{})
		if c.Decision != state.Run {
			t.Fatalf("begin %+v", c)
		}
		busy, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-b", Owner: "inst-B", Token: "B",
			Destination: "tcp:a:1", At: time.Now(), TTL: time.Second, Margin: 100 * time.Millisecond})
		if err != nil || busy.Decision != state.Busy {
			t.Fatalf("a change from mail-b during the attempt: %+v, %v", busy, err)
		}
		gone(t, b, "A", "mail-a")
		if _, ok := pendingScore(t, b); !ok {
			t.Fatal("the change from mail-b during the attempt is no longer pending")
		}
		st, _ := b.st.Status(ctx, "u1")
		if st.PendingHost != "mail-b" || st.InProgress || b.rdb.Exists(ctx, state.LockKey("u1")).Val() != 0 {
			t.Errorf("status %+v: want pending from mail-b, the lock released", st)
		}

		// The next attempt (from mail-b) answers 67 too, with no change
		// since: nothing of the user is left but the sweep's last request
		// of its full sync, which keeps a user a host still lists from
		// being asked for at every sweep (the sweep prunes it after the
		// full-sync interval).
		if err := b.rdb.ZAdd(ctx, state.SweepFullKey, redis.Z{Score: 1, Member: "u1"}).Err(); err != nil {
			t.Fatal(err)
		}
		c, err = b.st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-b", Owner: "inst-C", Token: "C",
			Destination: "tcp:a:1", TTL: time.Second, Margin: 100 * time.Millisecond})
		if err != nil || c.Decision != state.Run {
			t.Fatalf("begin from mail-b: %+v, %v", c, err)
		}
		gone(t, b, "C", "mail-b")
		if _, ok := pendingScore(t, b); ok {
			t.Error("a gone user with no newer change is still pending")
		}
		if n := b.rdb.Exists(ctx, state.UserKey("u1"), state.StateKey("u1"), state.LockKey("u1")).Val(); n != 0 {
			t.Errorf("%d keys of the gone user left", n)
		}
		if err := b.rdb.ZScore(ctx, state.SweepFullKey, "u1").Err(); err != nil {
			t.Errorf("the gone user's entry in %s: %v, want it kept", state.SweepFullKey, err)
		}
	})
}

// TestRedisScripts_GoneKeepsAnotherHostsChangeTheAttemptTookOver: a
// change seen on mail-b that an attempt from mail-a took over (a rerun's
// mark, ingest's mark from before the attempt, a retry's, one older than
// the attempt but recorded while it ran, the change of an attempt from
// mail-b that gave up or whose owner died) is not covered by mail-a's "no
// such user", however late it comes: it stays pending, from mail-b. Once mail-b answers the same,
// nothing is left, so the attempts end. A success covers what its attempt
// took over: a later 67 from mail-a then drops everything.
func TestRedisScripts_GoneKeepsAnotherHostsChangeTheAttemptTookOver(t *testing.T) {
	beginOn := func(t *testing.T, b backend, token, host string, at time.Time) state.Claim {
		t.Helper()
		c, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Host: host, Owner: "inst-" + token, Token: token,
			Destination: "tcp:x:1", At: at, TTL: time.Second, Margin: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	fail := func(t *testing.T, b backend, token, host string, c state.Claim, gone bool) {
		t.Helper()
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: token, Host: host, Error: "exit code 67",
			Class: "no_user", ExitCode: 67, Final: true, Release: true, Gone: gone, Start: c.Start}); err != nil {
			t.Fatal(err)
		}
	}
	// wantPendingFrom checks that the user is pending from host, with no
	// lock, and that host's 67 then drops the user.
	wantPendingFrom := func(t *testing.T, b backend, host string) {
		t.Helper()
		st, err := b.st.Status(ctx, "u1")
		if _, ok := pendingScore(t, b); !ok || err != nil || st.PendingHost != host || st.InProgress {
			t.Fatalf("status %+v, %v: want the user pending from %s, no attempt running", st, err, host)
		}
		c := beginOn(t, b, "Z", host, time.Time{})
		if c.Decision != state.Run {
			t.Fatalf("begin from %s: %+v", host, c)
		}
		fail(t, b, "Z", host, c, true)
		if _, ok := pendingScore(t, b); ok {
			t.Errorf("still pending after %s's 67 too", host)
		}
		if n := b.rdb.Exists(ctx, state.UserKey("u1")).Val(); n != 0 {
			t.Errorf("the record is left after %s's 67 too", host)
		}
	}
	busyFrom := func(t *testing.T, b backend, host string, at time.Time) {
		t.Helper()
		if c := beginOn(t, b, "B", host, at); c.Decision != state.Busy {
			t.Fatalf("a change from %s during the attempt: %+v", host, c)
		}
	}
	t.Run("rerun", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			c := begin(t, b, "A", time.Time{})
			time.Sleep(3 * time.Millisecond)
			busyFrom(t, b, "mail-b", time.Now())
			next := succeed(t, b, "A", c.Start, true)
			if next.Decision != state.Run {
				t.Fatalf("want a rerun, got %+v", next)
			}
			fail(t, b, "A", "mail-a", next, true)
			wantPendingFrom(t, b, "mail-b")
		})
	})
	t.Run("marked before the attempt", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			if err := b.st.MarkPending(ctx, "u1", "mail-b", time.Now()); err != nil {
				t.Fatal(err)
			}
			c := begin(t, b, "A", time.Time{})
			fail(t, b, "A", "mail-a", c, true)
			wantPendingFrom(t, b, "mail-b")
		})
	})
	t.Run("older than the attempt", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			c := begin(t, b, "A", time.Time{})
			busyFrom(t, b, "mail-b", c.Start.Add(-time.Minute))
			fail(t, b, "A", "mail-a", c, true)
			wantPendingFrom(t, b, "mail-b")
		})
	})
	t.Run("retried", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			if err := b.st.MarkPending(ctx, "u1", "mail-b", time.Now()); err != nil {
				t.Fatal(err)
			}
			c := begin(t, b, "A", time.Time{})
			if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
				Class: "tempfail", ExitCode: 75, Start: c.Start}); err != nil {
				t.Fatal(err)
			}
			c, err := b.st.Restart(ctx, "u1", "A", "tcp:b:1", time.Second)
			if err != nil || c.Decision != state.Run {
				t.Fatalf("restart %+v, %v", c, err)
			}
			fail(t, b, "A", "mail-a", c, true)
			wantPendingFrom(t, b, "mail-b")
		})
	})
	t.Run("given up, then another attempt", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			if err := b.st.MarkPending(ctx, "u1", "mail-b", time.Now()); err != nil {
				t.Fatal(err)
			}
			c := begin(t, b, "A", time.Time{})
			fail(t, b, "A", "mail-a", c, false) // a final failure that is not 67
			c = begin(t, b, "C", time.Time{})
			if c.Decision != state.Run {
				t.Fatalf("begin %+v", c)
			}
			fail(t, b, "C", "mail-a", c, true)
			wantPendingFrom(t, b, "mail-b")
		})
	})
	t.Run("given up by its own host", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			c := begin(t, b, "A", time.Time{})
			if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
				Class: "tempfail", ExitCode: 75, Final: true, Release: true, Start: c.Start}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Millisecond)
			c = beginOn(t, b, "C", "mail-b", time.Time{})
			if c.Decision != state.Run {
				t.Fatalf("begin from mail-b: %+v", c)
			}
			fail(t, b, "C", "mail-b", c, true)
			wantPendingFrom(t, b, "mail-a")
		})
	})
	t.Run("its owner died", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			begin(t, b, "A", time.Time{})
			b.expire(1100 * time.Millisecond)
			c := beginOn(t, b, "C", "mail-b", time.Time{})
			if c.Decision != state.Run {
				t.Fatalf("begin from mail-b after the owner died: %+v", c)
			}
			fail(t, b, "C", "mail-b", c, true)
			wantPendingFrom(t, b, "mail-a")
		})
	})
	t.Run("answered after its lock expired", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			if err := b.st.MarkPending(ctx, "u1", "mail-b", time.Now()); err != nil {
				t.Fatal(err)
			}
			c := begin(t, b, "A", time.Time{})
			b.expire(1100 * time.Millisecond)
			fail(t, b, "A", "mail-a", c, true)
			wantPendingFrom(t, b, "mail-b")
		})
	})
	t.Run("covered by a success", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			c := begin(t, b, "A", time.Time{})
			busyFrom(t, b, "mail-b", c.Start.Add(-time.Minute))
			if next := succeed(t, b, "A", c.Start, true); next.Decision != state.Done {
				t.Fatalf("want done, got %+v", next)
			}
			time.Sleep(3 * time.Millisecond)
			c = begin(t, b, "C", time.Time{})
			if c.Decision != state.Run {
				t.Fatalf("begin %+v", c)
			}
			fail(t, b, "C", "mail-a", c, true)
			if _, ok := pendingScore(t, b); ok || b.rdb.Exists(ctx, state.UserKey("u1")).Val() != 0 {
				t.Error("mail-a's 67 after a success kept the user: the success covered mail-b's change")
			}
		})
	})
}

// TestRedisScripts_LateGoneLeavesANewerAttemptsMarks: an attempt answered
// "no such user" after its lock expired (its owner was suspended) is older
// news than the attempt that took the lock after it: a failure that
// attempt recorded keeps the user failed and its change pending, and a
// success its state. Before, the late answer dropped the failed and
// pending marks (the newer owner, with the default host, sets no host on
// its change), and the change waited for the next full sync.
func TestRedisScripts_LateGoneLeavesANewerAttemptsMarks(t *testing.T) {
	lateGone := func(t *testing.T, b backend, a state.Claim) {
		t.Helper()
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 67",
			Class: "no_user", ExitCode: 67, Final: true, Release: true, Gone: true, Start: a.Start}); err != nil {
			t.Fatal(err)
		}
	}
	onBothRedis(t, func(t *testing.T, b backend) {
		// (Some real time passes: B's start is after A's, and miniredis's
		// clock does not move with its TTLs.)
		a := begin(t, b, "A", time.Time{})
		b.expire(time.Second)
		time.Sleep(2 * time.Millisecond)
		c, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Owner: "inst-B", Token: "B", Destination: "tcp:b:1",
			At: time.Now(), TTL: time.Second, Margin: 100 * time.Millisecond})
		if err != nil || c.Decision != state.Run {
			t.Fatalf("B: %+v, %v", c, err)
		}
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "B", Error: "exit code 75", Class: "tempfail",
			ExitCode: 75, At: time.Now(), Final: true, Release: true, Start: c.Start}); err != nil {
			t.Fatal(err)
		}
		lateGone(t, b, a)
		st, err := b.st.Status(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Failed || st.PendingSince.IsZero() {
			t.Errorf("status after B's failure and A's late no such user: %+v, want failed and pending", st)
		}

		// A success after A's start keeps its dsync state.
		a = begin(t, b, "A", time.Time{})
		b.expire(time.Second)
		time.Sleep(2 * time.Millisecond)
		c = begin(t, b, "C", time.Time{})
		if c.Decision != state.Run || succeed(t, b, "C", c.Start, false).Decision != state.Done {
			t.Fatalf("C: %+v", c)
		}
		lateGone(t, b, a)
		if v, err := b.rdb.HGet(ctx, state.StateKey("u1"), "tcp:b:1").Result(); err != nil || v != "state-after-C" {
			t.Errorf("dsync state after C's success and A's late no such user: %q, %v; want C's", v, err)
		}
	})
}

// TestRedisScripts_FullRequestCoveredByALaterFullSync: a full request asks
// for everything to be compared after it was made. A successful full dsync
// that started after it did that: the same request delivered again (the
// Broker's redelivery, a sweep batch sent again) is covered, and one that
// arrives while such a dsync runs is merged without a rerun. A full
// request newer than the full dsync, or one older than an incremental
// dsync, still runs a full one.
func TestRedisScripts_FullRequestCoveredByALaterFullSync(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		asked := time.Now().Add(-time.Second)
		a := beginFullAt(t, b, "A", asked)
		if a.Decision != state.Run {
			t.Fatalf("first full request: %+v", a)
		}
		// Delivered again while A's full dsync runs: merged, no rerun.
		if c := beginFullAt(t, b, "B", asked); c.Decision != state.Busy {
			t.Fatalf("the request again during A's full dsync: %+v, want busy", c)
		}
		if next := succeedFull(t, b, "A", a.Start, true); next.Decision != state.Done {
			t.Fatalf("A's success: %+v, want done (the request again was covered by A)", next)
		}
		// Delivered again after it: covered.
		if c := beginFullAt(t, b, "C", asked); c.Decision != state.Covered || !c.LastStart.Equal(a.Start) {
			t.Fatalf("the request again after A's full dsync: %+v, want covered by A's start %v", c, a.Start)
		}
		if _, ok := pendingScore(t, b); ok {
			t.Error("a covered full request left the user pending")
		}

		// A full request made after the last full dsync started runs.
		time.Sleep(2 * time.Millisecond)
		d := beginFullAt(t, b, "D", time.Now())
		if d.Decision != state.Run {
			t.Fatalf("a new full request: %+v, want run", d)
		}
		// One made while it runs, after its start, asks for a full rerun.
		time.Sleep(2 * time.Millisecond)
		if c := beginFullAt(t, b, "E", time.Now().Add(time.Second)); c.Decision != state.Busy {
			t.Fatalf("a full request during D: %+v, want busy", c)
		}
		if next := succeedFull(t, b, "D", d.Start, true); next.Decision != state.Run || !next.FullRequested {
			t.Fatalf("D's success: %+v, want a full rerun for the newer request", next)
		}
		succeedFull(t, b, "D", next(t, b, "D"), true)

		// An incremental dsync covers no full request, even one made
		// before it started (past the margin).
		time.Sleep(2 * time.Millisecond)
		old := time.Now()
		time.Sleep(150 * time.Millisecond)
		f := begin(t, b, "F", time.Now())
		if f.Decision != state.Run {
			t.Fatalf("an incremental change: %+v", f)
		}
		if c := beginFullAt(t, b, "G", old); c.Decision != state.Busy {
			t.Fatalf("an old full request during F: %+v, want busy", c)
		}
		if next := succeedFull(t, b, "F", f.Start, false); next.Decision != state.Run || !next.FullRequested {
			t.Fatalf("F's success: %+v, want a full rerun: an incremental dsync covers no full request", next)
		}
	})
}

// next is the start of the attempt token runs now (its rerun).
func next(t *testing.T, b backend, token string) time.Time {
	t.Helper()
	since, err := b.rdb.HGet(ctx, state.UserKey("u1"), "inprogress_since").Int64()
	if err != nil {
		t.Fatalf("%s's running attempt: %v", token, err)
	}
	return time.UnixMilli(since)
}

// TestRedisScripts_ACountedFailureOnlyReleases: the release after a
// retry's backoff was cut off (Counted) gives up the lock and leaves the
// change pending, and counts the attempt's failure, recorded when it
// failed, no second time.
func TestRedisScripts_ACountedFailureOnlyReleases(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		c := begin(t, b, "A", time.Time{})
		f := state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75", Class: "tempfail",
			ExitCode: 75, At: time.Now(), Start: c.Start}
		if _, err := b.st.Fail(ctx, f); err != nil {
			t.Fatal(err)
		}
		f.Release, f.Counted, f.Error = true, true, "cut off"
		if _, err := b.st.Fail(ctx, f); err != nil {
			t.Fatal(err)
		}
		st, err := b.st.Status(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if st.InProgress || st.PendingSince.IsZero() || st.ConsecutiveFailures != 1 || st.LastError != "exit code 75" {
			t.Errorf("status %+v: want released, pending, the one failure as it was recorded", st)
		}
	})
}

// TestRedisScripts_LateFailureLeavesANewerAttemptsMarks: an owner
// suspended past its lock's TTL answers its final failure (exit code 75,
// the last attempt) after another owner took the lock in a later attempt.
// That attempt's outcome is newer news: a success leaves the user neither
// failed nor pending, one still running ends without a rerun. Only a full
// sync the late owner was asked for, and that no full dsync since has
// done, stays asked for. Before, the late answer marked the user failed
// and pending: a false failure in the status and alerts, and one more
// dsync through the sweep.
func TestRedisScripts_LateFailureLeavesANewerAttemptsMarks(t *testing.T) {
	lateFail := func(t *testing.T, b backend, a state.Claim, full bool) {
		t.Helper()
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, At: a.Start, Final: true, Release: true, Full: full, Start: a.Start}); err != nil {
			t.Fatal(err)
		}
	}
	status := func(t *testing.T, b backend) state.UserStatus {
		t.Helper()
		st, err := b.st.Status(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	takeOver := func(t *testing.T, b backend, token string) state.Claim {
		t.Helper()
		b.expire(time.Second)
		time.Sleep(2 * time.Millisecond)
		c := begin(t, b, token, time.Now())
		if c.Decision != state.Run {
			t.Fatalf("%s after A's lock expired: %+v", token, c)
		}
		return c
	}
	onBothRedis(t, func(t *testing.T, b backend) {
		// A later success.
		a := begin(t, b, "A", time.Time{})
		c := takeOver(t, b, "B")
		succeed(t, b, "B", c.Start, false)
		lateFail(t, b, a, false)
		if st := status(t, b); st.Failed || !st.PendingSince.IsZero() || st.LastExitCode != 75 {
			t.Errorf("after B's success and A's late failure: %+v, want neither failed nor pending, A's failure recorded", st)
		}

		// A later attempt still running.
		time.Sleep(2 * time.Millisecond)
		a = begin(t, b, "A", time.Time{})
		c = takeOver(t, b, "C")
		lateFail(t, b, a, false)
		if next := succeed(t, b, "C", c.Start, true); next.Decision != state.Done {
			t.Errorf("C's success after A's late failure: %+v, want done", next)
		}
		if st := status(t, b); st.Failed || !st.PendingSince.IsZero() {
			t.Errorf("after A's late failure and C's success: %+v, want neither failed nor pending", st)
		}

		// A full sync asked of A, and only an incremental dsync since.
		time.Sleep(2 * time.Millisecond)
		a = begin(t, b, "A", time.Time{})
		c = takeOver(t, b, "D")
		succeed(t, b, "D", c.Start, false)
		lateFail(t, b, a, true)
		if st := status(t, b); st.Failed || st.PendingSince.IsZero() {
			t.Errorf("after D's incremental success and A's late failure of a full sync: %+v, want pending, not failed", st)
		}
		if v, _ := b.rdb.HGet(ctx, state.UserKey("u1"), "full_requested").Result(); v != "1" {
			t.Errorf("full_requested %q: want the full sync still asked for", v)
		}
	})
}

// TestRedisScripts_ExcludedDuringAnAttemptEndsIt: a user excluded while
// its dsync runs (the excluded-users file reloaded, an SADD) gets no
// further dsync from that run: no rerun for the changes that came
// meanwhile, no retry of a failed attempt. Its lock is released, and it
// is left neither pending nor failed, as Begin leaves an excluded user.
func TestRedisScripts_ExcludedDuringAnAttemptEndsIt(t *testing.T) {
	assertUnmarked := func(t *testing.T, b backend, after string) {
		t.Helper()
		if b.rdb.Exists(ctx, state.LockKey("u1")).Val() != 0 {
			t.Errorf("after %s: the lock is still held", after)
		}
		st, err := b.st.Status(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if st.Failed || !st.PendingSince.IsZero() || st.InProgress || !st.Excluded {
			t.Errorf("after %s: %+v, want the excluded user neither failed, pending nor in progress", after, st)
		}
	}
	t.Run("success with newer changes", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			c := begin(t, b, "A", time.Now().Add(-time.Second))
			// A change while it runs, then the user is excluded.
			if busy := begin(t, b, "B", time.Time{}); busy.Decision != state.Busy {
				t.Fatalf("second begin: %+v, want busy", busy)
			}
			if err := b.st.Exclude(ctx, "u1"); err != nil {
				t.Fatal(err)
			}
			_, next, err := b.st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "A", Host: "mail-a", Destination: "tcp:b:1",
				NewState: "s", Start: c.Start, TTL: time.Second, MayRerun: true, Rerun: true})
			if err != nil {
				t.Fatal(err)
			}
			if next.Decision != state.Done {
				t.Errorf("Succeed = %+v, want done: no rerun of an excluded user", next)
			}
			assertUnmarked(t, b, "the success")
		})
	})
	t.Run("failure then retry", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			at := time.Now().Add(-time.Second)
			c := begin(t, b, "A", at)
			if err := b.st.Exclude(ctx, "u1"); err != nil {
				t.Fatal(err)
			}
			if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
				Class: "tempfail", ExitCode: 75, At: at, Start: c.Start}); err != nil {
				t.Fatal(err)
			}
			r, err := b.st.Restart(ctx, "u1", "A", "tcp:b:1", time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.Decision != state.Excluded {
				t.Errorf("Restart = %+v, want excluded: no retry of an excluded user", r)
			}
			assertUnmarked(t, b, "the restart")
		})
	})
	t.Run("final failure", func(t *testing.T) {
		onBothRedis(t, func(t *testing.T, b backend) {
			at := time.Now().Add(-time.Second)
			c := begin(t, b, "A", at)
			if err := b.st.Exclude(ctx, "u1"); err != nil {
				t.Fatal(err)
			}
			if _, err := b.st.Fail(ctx, state.FailureArgs{User: "u1", Token: "A", Host: "mail-a", Error: "exit code 75",
				Class: "tempfail", ExitCode: 75, At: at, Start: c.Start, Final: true, Release: true, Full: true}); err != nil {
				t.Fatal(err)
			}
			assertUnmarked(t, b, "the final failure")
			if st, _ := b.st.Status(ctx, "u1"); st.LastFailure.IsZero() || st.ConsecutiveFailures != 1 {
				t.Errorf("the failure is not recorded: %+v", st)
			}
			// Taken back, its next change runs.
			if err := b.st.Include(ctx, "u1"); err != nil {
				t.Fatal(err)
			}
			if c := begin(t, b, "C", time.Time{}); c.Decision != state.Run {
				t.Errorf("begin after the inclusion: %+v, want run", c)
			}
		})
	})
}
