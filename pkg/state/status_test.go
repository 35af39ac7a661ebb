package state_test

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestOverview counts pending, failed and excluded users and finds the
// oldest pending change.
func TestOverview(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		o, err := b.st.Overview(ctx)
		if err != nil || o != (state.Overview{}) {
			t.Fatalf("empty Redis: %+v %v", o, err)
		}
		old := time.UnixMilli(1_700_000_000_000).UTC()
		b.st.MarkPending(ctx, "p1", "mail-a", old.Add(time.Hour))
		b.st.MarkPending(ctx, "p2", "mail-a", old)
		b.st.MarkPending(ctx, "p3", "mail-b", old.Add(2*time.Hour))
		b.rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: 1, Member: "f"})
		b.st.Exclude(ctx, "x1", "x2")
		at, _ := b.st.SetRecovery(ctx, 0)

		o, err = b.st.Overview(ctx)
		want := state.Overview{Pending: 3, OldestPending: old, Failed: 1, Excluded: 2, Recovery: at}
		if err != nil || o != want {
			t.Errorf("overview %+v %v, want %+v", o, err, want)
		}
	})
}

// TestFailed lists failed users, the oldest failure first, each with its
// record, up to the limit.
func TestFailed(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		if got, err := b.st.Failed(ctx, 10); err != nil || len(got) != 0 {
			t.Fatalf("empty Redis: %+v %v", got, err)
		}
		for i, u := range []string{"newest", "oldest", "middle"} {
			score := map[string]float64{"oldest": 1_700_000_000_000, "middle": 1_700_000_100_000, "newest": 1_700_000_200_000}[u]
			b.rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: score, Member: u})
			b.rdb.HSet(ctx, state.UserKey(u), state.FieldLastError, "error of "+u, state.FieldFailures, i+1)
		}
		got, err := b.st.Failed(ctx, 2)
		if err != nil || len(got) != 2 {
			t.Fatalf("Failed(2): %+v %v", got, err)
		}
		for i, want := range []struct {
			user     string
			failures int
		}{{"oldest", 2}, {"middle", 3}} {
			g := got[i]
			if g.User != want.user || !g.Failed || g.LastError != "error of "+want.user || g.ConsecutiveFailures != want.failures {
				t.Errorf("Failed(2)[%d] = %+v, want %s's record", i, g, want.user)
			}
		}
		if got, err := b.st.Failed(ctx, 0); err != nil || got != nil {
			t.Errorf("Failed(0): %+v %v, want none", got, err)
		}
	})
}

// TestMarkPending_AZeroTimeIsNow: a mark without a time is taken as now,
// never stored as year 1 (which ZADD LT would never replace, and which
// the status reads as no change at all): the user's status says it
// waits since then, and the overview's oldest change is set.
func TestMarkPending_AZeroTimeIsNow(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		before := time.Now().Add(-time.Millisecond)
		if err := b.st.MarkPending(ctx, "u1", "mail-a.test", time.Time{}); err != nil {
			t.Fatal(err)
		}
		s, err := b.st.Status(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if s.PendingSince.Before(before) || s.PendingSince.After(time.Now()) || s.PendingHost != "mail-a.test" {
			t.Errorf("pending since %v on %q, want now on mail-a.test", s.PendingSince, s.PendingHost)
		}
		o, err := b.st.Overview(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if o.Pending != 1 || o.OldestPending.Before(before) {
			t.Errorf("overview %+v, want one user pending since now", o)
		}
		// An older change found later still replaces it.
		old := time.UnixMilli(1_700_000_000_000).UTC()
		if err := b.st.MarkPending(ctx, "u1", "mail-a.test", old); err != nil {
			t.Fatal(err)
		}
		if s, _ := b.st.Status(ctx, "u1"); !s.PendingSince.Equal(old) {
			t.Errorf("pending since %v, want the older change's %v", s.PendingSince, old)
		}
	})
}

// TestOldestPendingOnly_SkipsFailedUsers: the oldest pending user that is
// not failed, read among the first n pending ones.
func TestOldestPendingOnly_SkipsFailedUsers(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		if _, ok, err := b.st.OldestPendingOnly(ctx, 100); err != nil || ok {
			t.Fatalf("nobody pending: %v, %v", ok, err)
		}
		base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
		for i, u := range []string{"failed1", "failed2", "pending1", "pending2"} {
			if err := b.st.MarkPending(ctx, u, "mail-a", base.Add(time.Duration(i)*time.Minute)); err != nil {
				t.Fatal(err)
			}
		}
		b.rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: 1, Member: "failed1"}, redis.Z{Score: 2, Member: "failed2"})
		at, ok, err := b.st.OldestPendingOnly(ctx, 100)
		if err != nil || !ok || !at.Equal(base.Add(2*time.Minute)) {
			t.Errorf("oldest pending, not failed: %v, %v, %v; want pending1's %v", at, ok, err, base.Add(2*time.Minute))
		}
		if _, ok, err := b.st.OldestPendingOnly(ctx, 2); err != nil || ok {
			t.Errorf("among the first 2 only, both failed: %v, %v; want none", ok, err)
		}
	})
}

// roundTrips counts the round trips a client makes: one a command, one a
// pipeline; not those that set up a new connection (HELLO, CLIENT
// SETINFO).
type roundTrips struct{ n int }

func setup(name string) bool { return name == "hello" || name == "client" }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !setup(cmd.Name()) {
			r.n++
		}
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && !setup(cmds[0].Name()) {
			r.n++
		}
		return next(ctx, cmds)
	}
}

// TestStatusLists_OneRoundTripForAllUsers: the status's lists of failed,
// pending and running users read their users' records in one round trip,
// not one a user: a list of 1,000 against a Redis a few milliseconds away
// ran into the status's 5 s budget.
func TestStatusLists_OneRoundTripForAllUsers(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	for i := range 50 {
		u := fmt.Sprintf("u%d", i)
		mr.ZAdd(state.FailedKey, float64(i), u)
		mr.ZAdd(state.PendingKey, float64(i), u)
		mr.ZAdd(state.RunningKey, float64(i), u)
		mr.Set(state.LockKey(u), "tok")
	}
	// As every serving role does at its start; the first read of a Redis
	// without them loads the state sizes' script on its own.
	if err := st.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	rt := &roundTrips{}
	rdb.AddHook(rt)
	for name, read := range map[string]func() (int, error){
		"failed":  func() (int, error) { l, err := st.Failed(ctx, 1000); return len(l), err },
		"pending": func() (int, error) { l, err := st.Pending(ctx, 1000); return len(l), err },
		"running": func() (int, error) { _, l, err := st.Running(ctx, 1000); return len(l), err },
	} {
		rt.n = 0
		n, err := read()
		// Running also reads the locks, in a round trip of their own.
		if want := map[string]int{"failed": 2, "pending": 2, "running": 3}[name]; err != nil || n != 50 || rt.n != want {
			t.Errorf("%s: %d users, %v, in %d round trips; want 50 in %d", name, n, err, rt.n, want)
		}
	}
}

// TestStatusLists_ReadTheStatesSizesNotTheStates: a status shows of each
// dsync state its size alone; the states of a thousand failed users, up
// to 1 MiB each, were read whole for it, a gigabyte when a replica is
// down, which is when an administrator asks. The sizes are right, also
// from a Redis that never ran the script before.
func TestStatusLists_ReadTheStatesSizesNotTheStates(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := state.New(rdb)
	big := strings.Repeat("s", 1<<20)
	for i := range 20 {
		u := fmt.Sprintf("u%d", i)
		rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: float64(i), Member: u})
		rdb.HSet(ctx, state.StateKey(u), "tcp:replica:12345", big, "tcp:other:1", "abc")
	}
	outBytes := func() int64 {
		for line := range strings.Lines(rdb.Info(ctx, "stats").Val()) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_net_output_bytes:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		t.Fatal("INFO has no total_net_output_bytes")
		return 0
	}
	before := outBytes()
	l, err := st.Failed(ctx, 1000)
	if err != nil || len(l) != 20 {
		t.Fatalf("%d failed users, %v", len(l), err)
	}
	if moved := outBytes() - before; moved > 1<<20 {
		t.Errorf("the list of 20 failed users moved %d bytes from Redis: their dsync states", moved)
	}
	for _, s := range l {
		if want := map[string]int{"tcp:replica:12345": 1 << 20, "tcp:other:1": 3}; !maps.Equal(s.States, want) {
			t.Errorf("%s: states %v, want %v", s.User, s.States, want)
		}
	}
}
