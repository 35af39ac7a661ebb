package state_test

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// Short TTLs: on the real server they pass by sleeping.
const (
	sweepLock  = 400 * time.Millisecond
	sweepClaim = 150 * time.Millisecond
)

func TestSweep_OneAtATimeAndADeadListingIsTakenOver(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		st, err := b.st.SweepBegin(ctx, "s1", "tok1", "schedule", sweepLock, sweepClaim)
		if err != nil || st.Decision != "started" || st.ID != "s1" || st.Started.IsZero() || st.Abandoned != "" {
			t.Fatalf("begin: %+v %v", st, err)
		}
		if st, _ := b.st.SweepBegin(ctx, "s2", "tok2", "schedule", sweepLock, sweepClaim); st.Decision != "running" || st.ID != "s1" {
			t.Fatalf("second begin: %+v", st)
		}
		b.expire(sweepClaim) // the listing step died; the lock still holds
		st, err = b.st.SweepBegin(ctx, "s3", "tok3", "schedule", sweepLock, sweepClaim)
		if err != nil || st.Decision != "relist" || st.ID != "s1" {
			t.Fatalf("after the claim expired: %+v %v", st, err)
		}
		if _, _, err := b.st.SweepListed(ctx, "s1", "tok1", state.SweepListing{HostsJSON: "[]"}, sweepLock, sweepLock); !errors.Is(err, state.ErrSweepLost) {
			t.Errorf("the dead step's late listing: %v", err)
		}
	})
}

// TestSweep_ABeginTellsWhenTheFirstBatchIsStillToCome: a begin while a
// sweep runs that is listed, and whose first batch is neither claimed nor
// recorded, learns when it was listed: its first continuation may be on
// its way, or lost.
func TestSweep_ABeginTellsWhenTheFirstBatchIsStillToCome(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepBegin(ctx, "s1", "tok", "schedule", sweepLock, sweepClaim)
		if st, _ := b.st.SweepBegin(ctx, "s2", "tok2", "schedule", sweepLock, sweepClaim); st.Decision != "running" || !st.Listed.IsZero() {
			t.Errorf("while listing: %+v", st)
		}
		b.st.SweepAddUsers(ctx, "s1", 0, []string{"a", "b"}, time.Hour)
		b.st.SweepListed(ctx, "s1", "tok", state.SweepListing{HostsJSON: `["mail-a"]`}, sweepLock, sweepLock)
		st, err := b.st.SweepBegin(ctx, "s2", "tok2", "schedule", sweepLock, sweepClaim)
		if err != nil || st.Decision != "running" || st.ID != "s1" || st.Listed.IsZero() || st.Now.Before(st.Listed) {
			t.Fatalf("listed, first batch to come: %+v %v", st, err)
		}
		b.st.SweepClaim(ctx, "s1", 0, "c1", sweepLock, sweepClaim)
		if st, _ := b.st.SweepBegin(ctx, "s2", "tok3", "schedule", sweepLock, sweepClaim); st.Decision != "running" || !st.Listed.IsZero() {
			t.Errorf("first batch claimed: %+v", st)
		}
		b.st.SweepCommit(ctx, state.SweepCommitArgs{ID: "s1", Token: "c1", From: 0, To: 1, LockTTL: sweepLock, UsersTTL: sweepLock})
		if st, _ := b.st.SweepBegin(ctx, "s2", "tok4", "schedule", sweepLock, sweepClaim); st.Decision != "running" || !st.Listed.IsZero() {
			t.Errorf("first batch recorded: %+v", st)
		}
	})
}

func TestSweep_ListedUnionsPendingAndFailedKeepingTheFirstHost(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepBegin(ctx, "s1", "tok", "schedule", sweepLock, sweepClaim)
		b.st.SweepAddUsers(ctx, "s1", 0, []string{"a", "b"}, time.Hour)
		b.st.SweepAddUsers(ctx, "s1", 1, []string{"b", "c"}, time.Hour)
		b.st.MarkPending(ctx, "p", "mail-b", time.Now())
		b.st.MarkPending(ctx, "a", "mail-a", time.Now())
		b.rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: 1, Member: "f"})

		total, finished, err := b.st.SweepListed(ctx, "s1", "tok", state.SweepListing{HostsJSON: `["mail-a","mail-b"]`, Listed: 4, BadNames: 2}, sweepLock, sweepLock)

		if err != nil || total != 5 || finished {
			t.Fatalf("listed: %d %v %v", total, finished, err)
		}
		es, err := b.st.SweepUsers(ctx, "s1", 0, 10)
		want := []state.SweepEntry{{"f", 0}, {"p", 0}, {"a", 1}, {"b", 1}, {"c", 2}}
		if err != nil || len(es) != len(want) {
			t.Fatalf("users %+v %v", es, err)
		}
		for i := range want {
			if es[i] != want[i] {
				t.Errorf("entry %d: %+v, want %+v", i, es[i], want[i])
			}
		}
		st, _ := b.st.SweepStatus(ctx)
		if !st.Running || st.Total != 5 || st.Listed != 4 || st.Counts["skipped_bad_user"] != 2 || st.Reason != "schedule" {
			t.Errorf("status %+v", st)
		}
	})
}

// TestSweep_ListedTakesMorePendingAndFailedUsersThanAChunk: the pending
// and failed users join the candidates 1,000 at a time; each of them is
// there once, those a host listed keep its score.
func TestSweep_ListedTakesMorePendingAndFailedUsersThanAChunk(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepBegin(ctx, "s1", "tok", "schedule", sweepLock, sweepClaim)
		listed := []string{"p0500", "p1000", "p2499", "f0999"}
		b.st.SweepAddUsers(ctx, "s1", 0, listed, time.Hour)
		var pending, failed []redis.Z
		for i := range 2500 {
			pending = append(pending, redis.Z{Score: float64(i), Member: fmt.Sprintf("p%04d", i)})
		}
		for i := range 1001 {
			failed = append(failed, redis.Z{Score: float64(i), Member: fmt.Sprintf("f%04d", i)})
		}
		failed = append(failed, redis.Z{Score: 1, Member: "p0001"})
		b.rdb.ZAdd(ctx, state.PendingKey, pending...)
		b.rdb.ZAdd(ctx, state.FailedKey, failed...)

		total, _, err := b.st.SweepListed(ctx, "s1", "tok", state.SweepListing{HostsJSON: `["mail-a"]`, Listed: 4}, sweepLock, sweepLock)

		if want := int64(2500 + 1001); err != nil || total != want {
			t.Fatalf("listed: %d users, %v; want %d", total, err, want)
		}
		es, err := b.st.SweepUsers(ctx, "s1", 0, 4000)
		if err != nil || len(es) != 3501 {
			t.Fatalf("users: %d, %v", len(es), err)
		}
		hosts := map[string]int{}
		for _, e := range es {
			hosts[e.User] = e.Host
		}
		for _, u := range listed {
			if hosts[u] != 1 {
				t.Errorf("%s, listed by the first host, has %d", u, hosts[u])
			}
		}
		if h, ok := hosts["p1999"]; !ok || h != 0 {
			t.Errorf("p1999, pending and not listed: %d, %v", h, ok)
		}
	})
}

func TestSweep_ClaimCommitAndFinish(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepBegin(ctx, "s1", "tok", "schedule", sweepLock, sweepClaim)
		b.st.SweepAddUsers(ctx, "s1", 0, []string{"a", "b", "c"}, time.Hour)
		b.st.SweepListed(ctx, "s1", "tok", state.SweepListing{HostsJSON: `["mail-a"]`}, sweepLock, sweepLock)
		commit := func(token string, from, to int64, full ...string) (bool, error) {
			return b.st.SweepCommit(ctx, state.SweepCommitArgs{ID: "s1", Token: token, From: from, To: to,
				Counts: map[string]int64{"requested_stale": int64(len(full))}, FullRequested: full,
				FullSyncInterval: time.Hour, LockTTL: sweepLock, UsersTTL: sweepLock})
		}

		bt, err := b.st.SweepClaim(ctx, "s1", 0, "c1", sweepLock, sweepClaim)
		if err != nil || bt.Decision != "ok" || bt.Total != 3 || bt.HostsJSON != `["mail-a"]` || bt.Now.IsZero() || bt.Reason != "schedule" {
			t.Fatalf("claim: %+v %v", bt, err)
		}
		if bt, _ := b.st.SweepClaim(ctx, "s1", 0, "c2", sweepLock, sweepClaim); bt.Decision != "busy" {
			t.Errorf("claimed twice: %+v", bt)
		}
		if done, err := commit("c1", 0, 2, "a"); err != nil || done {
			t.Fatalf("commit: %v %v", done, err)
		}
		// A redelivery of the batch just recorded learns that it is the
		// last one recorded: its continuation may still be on its way.
		if bt, _ := b.st.SweepClaim(ctx, "s1", 0, "c3", sweepLock, sweepClaim); bt.Decision != "duplicate" || bt.Offset != 2 ||
			bt.LastFrom != 0 || bt.ClaimHeld || bt.LastBatch.IsZero() {
			t.Errorf("old offset: %+v", bt)
		}
		if bt, _ := b.st.SweepClaim(ctx, "s1", 7, "c3", sweepLock, sweepClaim); bt.Decision != "duplicate" {
			t.Errorf("wrong offset: %+v", bt)
		}
		// A slow step whose claim expired may still record its batch...
		b.st.SweepClaim(ctx, "s1", 2, "slow", sweepLock, sweepClaim)
		b.expire(sweepClaim)
		// ...unless another step claimed it meanwhile.
		b.st.SweepClaim(ctx, "s1", 2, "other", sweepLock, sweepClaim)
		if _, err := commit("slow", 2, 3); !errors.Is(err, state.ErrSweepLost) {
			t.Errorf("slow step after a takeover: %v", err)
		}
		if done, err := commit("other", 2, 3, "c"); err != nil || !done {
			t.Fatalf("last commit: %v %v", done, err)
		}

		st, _ := b.st.SweepStatus(ctx)
		if st.Running || st.Finished.IsZero() || st.Offset != 3 || st.Batches != 2 || st.Counts["requested_stale"] != 2 ||
			st.LastCompletedEnd.IsZero() || !st.LastCompletedStart.Equal(st.Started) {
			t.Errorf("status %+v", st)
		}
		if n, _ := b.rdb.Exists(ctx, state.SweepLockKey, state.SweepClaimKey, state.SweepUsersKey("s1")).Result(); n != 0 {
			t.Errorf("%d keys left", n)
		}
		if n, _ := b.rdb.ZCard(ctx, state.SweepFullKey).Result(); n != 2 {
			t.Errorf("%d full-sync records", n)
		}
		if bt, _ := b.st.SweepClaim(ctx, "s1", 3, "late", sweepLock, sweepClaim); bt.Decision != "stale" {
			t.Errorf("claim after the end: %+v", bt)
		}
		// The next sweep keeps the last completed one's bounds.
		b.st.SweepBegin(ctx, "s2", "tok", "cli", sweepLock, sweepClaim)
		if st2, _ := b.st.SweepStatus(ctx); st2.ID != "s2" || !st2.Running || st2.Total != -1 || !st2.LastCompletedEnd.Equal(st.LastCompletedEnd) {
			t.Errorf("next sweep's status %+v", st2)
		}
	})
}

func TestSweep_ExpiredLockIsTakenBackOrReplaced(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepBegin(ctx, "s1", "tok", "schedule", sweepLock, sweepClaim)
		b.st.SweepAddUsers(ctx, "s1", 0, []string{"a", "b"}, time.Hour)
		b.st.SweepListed(ctx, "s1", "tok", state.SweepListing{HostsJSON: `[]`}, sweepLock, 4*sweepLock)
		b.expire(sweepLock)
		// A late continuation, nothing replaced the sweep: it goes on.
		if bt, _ := b.st.SweepClaim(ctx, "s1", 0, "c1", sweepLock, sweepClaim); bt.Decision != "ok" {
			t.Fatalf("late continuation: %+v", bt)
		}
		if st, _ := b.st.SweepBegin(ctx, "s2", "tok2", "schedule", sweepLock, sweepClaim); st.Decision != "running" {
			t.Errorf("the lock was not taken back: %+v", st)
		}
		b.expire(sweepLock)
		// Lost again; this time a new sweep replaces it.
		st, _ := b.st.SweepBegin(ctx, "s2", "tok2", "schedule", sweepLock, sweepClaim)
		if st.Decision != "started" || st.Abandoned != "s1" {
			t.Fatalf("new sweep: %+v", st)
		}
		if bt, _ := b.st.SweepClaim(ctx, "s1", 0, "c3", sweepLock, sweepClaim); bt.Decision != "stale" {
			t.Errorf("the old sweep's continuation: %+v", bt)
		}
	})
}

// TestSweep_ASweepOfEveryUserReplacesARunningRetrySweep: begun while a
// retry sweep runs, a sweep of another reason starts in its place, also
// while a step of the retry sweep holds the claim: that step's commit is
// lost, and its continuation stale. A retry sweep begun while any sweep
// runs is covered by it. A begin sent twice reports the replaced sweep
// both times.
func TestSweep_ASweepOfEveryUserReplacesARunningRetrySweep(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepBegin(ctx, "r1", "tok", "retry", time.Hour, time.Hour)
		b.st.SweepAddUsers(ctx, "r1", 0, []string{"a", "b"}, time.Hour)
		b.st.SweepListed(ctx, "r1", "tok", state.SweepListing{HostsJSON: `[]`}, time.Hour, time.Hour)
		if st, _ := b.st.SweepBegin(ctx, "r2", "tok-r2", "retry", time.Hour, time.Hour); st.Decision != "running" || st.ID != "r1" {
			t.Errorf("a retry sweep while one runs: %+v; want it covered", st)
		}
		if bt, err := b.st.SweepClaim(ctx, "r1", 0, "step", time.Hour, time.Hour); err != nil || bt.Decision != "ok" {
			t.Fatalf("the retry sweep's step: %+v %v", bt, err)
		}
		for range 2 { // the second time as a resent call
			st, err := b.st.SweepBegin(ctx, "s1", "tok-s1", "schedule", time.Hour, time.Hour)
			if err != nil || st.Decision != "started" || st.ID != "s1" || st.Abandoned != "r1" || st.Replaced != "retry" {
				t.Fatalf("a scheduled sweep while the retry sweep runs: %+v %v; want it started in r1's place", st, err)
			}
		}
		if done, err := b.st.SweepCommit(ctx, state.SweepCommitArgs{ID: "r1", Token: "step", From: 0, To: 2, LockTTL: time.Hour, UsersTTL: time.Hour}); !errors.Is(err, state.ErrSweepLost) {
			t.Errorf("the replaced retry step's commit: %v %v; want it lost", done, err)
		}
		if bt, _ := b.st.SweepClaim(ctx, "r1", 0, "c2", time.Hour, time.Hour); bt.Decision != "stale" {
			t.Errorf("the replaced retry sweep's continuation: %+v", bt)
		}
		if st, _ := b.st.SweepBegin(ctx, "r3", "tok-r3", "retry", time.Hour, time.Hour); st.Decision != "running" || st.ID != "s1" {
			t.Errorf("a retry sweep while s1 runs: %+v; want it covered", st)
		}
		if st, _ := b.st.SweepBegin(ctx, "s2", "tok-s2", "schedule", time.Hour, time.Hour); st.Decision != "running" || st.ID != "s1" {
			t.Errorf("another scheduled sweep while s1 runs: %+v; want it covered", st)
		}
		// An administrator's sweep replaces one of dovewarden's own, and
		// is covered by nothing but another administrator's.
		if st, err := b.st.SweepBegin(ctx, "a1", "tok-a1", "cli", time.Hour, time.Hour); err != nil || st.Decision != "started" ||
			st.Abandoned != "s1" || st.Replaced != "asked" {
			t.Errorf("an administrator's sweep while s1 runs: %+v %v; want it started in s1's place", st, err)
		}
		for _, reason := range []string{"schedule", "retry", "start", "recovery", "cli", "after-fix"} {
			if st, _ := b.st.SweepBegin(ctx, "x-"+reason, "tok-x-"+reason, reason, time.Hour, time.Hour); st.Decision != "running" || st.ID != "a1" {
				t.Errorf("a %s sweep while the administrator's runs: %+v; want it covered", reason, st)
			}
		}
	})
}

// TestSweep_ASweepOlderThanTheRecoveryTimeIsReplaced: local mode's start
// sets the recovery time; a sweep its last run left running started
// before it, judged users without it, and covers no request: the next
// begin replaces it. A sweep started after it still covers requests.
func TestSweep_ASweepOlderThanTheRecoveryTimeIsReplaced(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepBegin(ctx, "s1", "tok", "schedule", time.Hour, sweepClaim)
		b.st.SweepAddUsers(ctx, "s1", 0, []string{"a", "b"}, time.Hour)
		b.st.SweepListed(ctx, "s1", "tok", state.SweepListing{HostsJSON: `[]`}, time.Hour, time.Hour)
		time.Sleep(2 * time.Millisecond)
		if _, err := b.st.SetRecovery(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
		st, err := b.st.SweepBegin(ctx, "s2", "tok2", "start", time.Hour, sweepClaim)
		if err != nil || st.Decision != "started" || st.ID != "s2" || st.Abandoned != "s1" || st.Replaced != "recovery" {
			t.Fatalf("begin after the recovery time: %+v %v; want s1 replaced", st, err)
		}
		if bt, _ := b.st.SweepClaim(ctx, "s1", 0, "c1", time.Hour, sweepClaim); bt.Decision != "stale" {
			t.Errorf("the old sweep's continuation: %+v", bt)
		}
		if st, _ := b.st.SweepBegin(ctx, "s3", "tok3", "schedule", time.Hour, sweepClaim); st.Decision == "started" || st.ID != "s2" {
			t.Errorf("a begin while s2 runs: %+v; want s2 to cover it", st)
		}
	})
}

// TestSweep_FullSyncsOffForgetsTheirRecords: with periodic full syncs
// off, a completed sweep leaves no record of full syncs asked for, which
// would otherwise stay for ever.
func TestSweep_FullSyncsOffForgetsTheirRecords(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.rdb.ZAdd(ctx, state.SweepFullKey, redis.Z{Score: float64(time.Now().UnixMilli()), Member: "a"})
		b.st.SweepBegin(ctx, "s1", "tok", "schedule", sweepLock, sweepClaim)
		b.st.SweepAddUsers(ctx, "s1", 0, []string{"a"}, time.Hour)
		b.st.SweepListed(ctx, "s1", "tok", state.SweepListing{HostsJSON: `["mail-a"]`}, sweepLock, sweepLock)
		b.st.SweepClaim(ctx, "s1", 0, "c1", sweepLock, sweepClaim)
		done, err := b.st.SweepCommit(ctx, state.SweepCommitArgs{ID: "s1", Token: "c1", From: 0, To: 1,
			LockTTL: sweepLock, UsersTTL: sweepLock})
		if err != nil || !done {
			t.Fatalf("commit: %v %v", done, err)
		}
		if n, _ := b.rdb.Exists(ctx, state.SweepFullKey).Result(); n != 0 {
			t.Error("the full-sync records stay with full syncs off")
		}
	})
}

func TestSweep_Facts(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.MarkPending(ctx, "p", "mail-b", time.Now())
		b.rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: 1_700_000_000_000, Member: "f"})
		b.rdb.HSet(ctx, state.UserKey("f"), state.FieldLastStart, "1600000000000", state.FieldLastFull, "1")
		b.st.Exclude(ctx, "x")
		b.rdb.Set(ctx, state.LockKey("l"), "owner", time.Minute)
		b.rdb.ZAdd(ctx, state.SweepFullKey, redis.Z{Score: 1_650_000_000_000, Member: "l"})

		fs, err := b.st.SweepFacts(ctx, []string{"p", "f", "x", "l", "nobody"})

		if err != nil || len(fs) != 5 {
			t.Fatalf("%+v %v", fs, err)
		}
		if !fs[0].Pending || fs[0].PendingHost != "mail-b" || fs[0].Failed {
			t.Errorf("p: %+v", fs[0])
		}
		if !fs[1].Failed || fs[1].FailedAt.UnixMilli() != 1_700_000_000_000 || fs[1].LastStart.UnixMilli() != 1_600_000_000_000 || !fs[1].LastFull {
			t.Errorf("f: %+v", fs[1])
		}
		if !fs[2].Excluded || !fs[3].InProgress || fs[3].FullRequested.UnixMilli() != 1_650_000_000_000 {
			t.Errorf("x, l: %+v %+v", fs[2], fs[3])
		}
		if fs[4] != (state.SweepFacts{}) {
			t.Errorf("nobody: %+v", fs[4])
		}
	})
}

// TestSweep_FactsKeepTheLastFullSync: a full dsync's start stays the
// user's last full sync when incremental dsyncs follow it (a user's first
// dsync, full because it has no state, then its changes'): the sweep
// counts the full-sync interval from it, rather than finding the user due
// for another full sync at its next run.
func TestSweep_FactsKeepTheLastFullSync(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		var starts []time.Time
		for i, full := range []bool{true, false} {
			tok := fmt.Sprint("tok", i)
			c, err := b.st.Begin(ctx, state.BeginArgs{User: "u", Host: "mail-a", Owner: "o", Token: tok, Destination: "tcp:b:1", TTL: time.Minute, Full: full})
			if err != nil || c.Decision != state.Run {
				t.Fatalf("Begin %d: %+v %v", i, c, err)
			}
			if _, _, err := b.st.Succeed(ctx, state.SuccessArgs{User: "u", Token: tok, Host: "mail-a", Destination: "tcp:b:1",
				NewState: "s", Start: c.Start, TTL: time.Minute, Full: full}); err != nil {
				t.Fatal(err)
			}
			starts = append(starts, c.Start)
			time.Sleep(2 * time.Millisecond)
		}
		fs, err := b.st.SweepFacts(ctx, []string{"u"})
		if err != nil || len(fs) != 1 {
			t.Fatalf("%+v %v", fs, err)
		}
		if f := fs[0]; f.LastFull || !f.LastStart.Equal(starts[1]) || !f.LastFullStart.Equal(starts[0]) {
			t.Errorf("facts %+v; want the last start %v, incremental, and the last full sync's start %v", f, starts[1], starts[0])
		}
	})
}

// TestKnownUsers lists every user with a record, in chunks of at most the
// size asked for, and nothing
// else: not the other keys of a user, nor a
// user whose name looks like a key. Names with braces come back whole.
func TestKnownUsers(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		want := map[string]bool{"a}b": true, "{x}": true, "jürgen@example.com": true, "dovewarden:user:{c}": true}
		for i := range 25 {
			want[fmt.Sprintf("u%02d", i)] = true
		}
		for u := range want {
			if err := b.rdb.HSet(ctx, state.UserKey(u), state.FieldLastStart, "1").Err(); err != nil {
				t.Fatal(err)
			}
		}
		// Keys that are no user record.
		if err := b.rdb.Set(ctx, state.LockKey("locked-only"), "t", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.HSet(ctx, state.StateKey("state-only"), "tcp:x", "s").Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.ZAdd(ctx, state.PendingKey, redis.Z{Score: 1, Member: "pending-only"}).Err(); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		calls := 0
		err := b.st.KnownUsers(ctx, 10, func(users []string) error {
			calls++
			if len(users) == 0 || len(users) > 10 {
				t.Errorf("called with %d users, want 1 to 10", len(users))
			}
			for _, u := range users {
				got[u] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) {
			t.Errorf("known users %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}
		if calls < 3 {
			t.Errorf("%d calls for %d users in chunks of 10", calls, len(want))
		}
		stop := errors.New("stop")
		if err := b.st.KnownUsers(ctx, 10, func([]string) error { return stop }); !errors.Is(err, stop) {
			t.Errorf("fn's error %v, want it returned", err)
		}
	})
}

// TestSweep_DropRemovesTheCandidates: SweepDrop (UNLINK) leaves no
// candidate of the abandoned sweep, and none of another sweep goes.
func TestSweep_DropRemovesTheCandidates(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		b.st.SweepAddUsers(ctx, "s1", 0, []string{"a", "b"}, time.Hour)
		b.st.SweepAddUsers(ctx, "s2", 0, []string{"c"}, time.Hour)
		if err := b.st.SweepDrop(ctx, "s1"); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.rdb.Exists(ctx, state.SweepUsersKey("s1")).Result(); n != 0 {
			t.Error("the dropped sweep's candidates stay")
		}
		if n, _ := b.rdb.ZCard(ctx, state.SweepUsersKey("s2")).Result(); n != 1 {
			t.Errorf("the other sweep's candidates: %d, want 1", n)
		}
	})
}
