package state_test

import (
	"slices"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// running reads Running and returns its count and users.
func running(t *testing.T, b backend, limit int64) (int64, []string) {
	t.Helper()
	n, sts, err := b.st.Running(ctx, limit)
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, st := range sts {
		if !st.InProgress || st.InProgressSince.IsZero() || st.InProgressBy == "" {
			t.Errorf("running user %+v: not in progress, or without its start and owner", st)
		}
		users = append(users, st.User)
	}
	return n, users
}

// The users whose attempt runs, the longest running first: an attempt's
// start adds its user, each way its owner gives up the lock (success,
// failure, gone, excluded) takes it out, and an owner that died leaves
// an entry that goes once its lock has expired.
func TestRedisScripts_Running(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		begin := func(user, token string) state.Claim {
			t.Helper()
			c, err := b.st.Begin(ctx, state.BeginArgs{User: user, Host: "mail-a", Owner: "inst-" + token, Token: token,
				Destination: "tcp:b:1", At: time.Now(), TTL: time.Second, Margin: 100 * time.Millisecond})
			if err != nil || c.Decision != state.Run {
				t.Fatalf("Begin %s: %+v, %v", user, c, err)
			}
			return c
		}
		want := func(step string, limit, n int64, users ...string) {
			t.Helper()
			gotN, got := running(t, b, limit)
			if gotN != n || !slices.Equal(got, users) {
				t.Errorf("%s: running %d %v, want %d %v", step, gotN, got, n, users)
			}
		}
		want("at first", 20, 0)
		ca := begin("a", "A")
		time.Sleep(5 * time.Millisecond) // a later start than a's
		cb := begin("b", "B")
		time.Sleep(5 * time.Millisecond)
		cc := begin("c", "C")
		time.Sleep(5 * time.Millisecond)
		cd := begin("d", "D")
		time.Sleep(5 * time.Millisecond)
		begin("e", "E")
		want("five running", 20, 5, "a", "b", "c", "d", "e")
		want("the first two asked for", 2, 5, "a", "b")
		want("none asked for", 0, 5)

		if _, _, err := b.st.Succeed(ctx, state.SuccessArgs{User: "a", Token: "A", Host: "mail-a", Destination: "tcp:b:1",
			Start: ca.Start, TTL: time.Second}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "b", Token: "B", Host: "mail-a", Error: "x", Class: "tempfail",
			At: time.Now(), Final: true, Release: true, Start: cb.Start}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.Fail(ctx, state.FailureArgs{User: "c", Token: "C", Host: "mail-a", Error: "no such user", Class: "gone",
			At: time.Now(), Release: true, Gone: true, Start: cc.Start}); err != nil {
			t.Fatal(err)
		}
		if err := b.st.Exclude(ctx, "d"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.st.Succeed(ctx, state.SuccessArgs{User: "d", Token: "D", Host: "mail-a", Destination: "tcp:b:1",
			Start: cd.Start, TTL: time.Second}); err != nil {
			t.Fatal(err)
		}
		// Each release took its entry out: the set does not grow with
		// every user ever replicated until a status read prunes it.
		if n, err := b.rdb.ZCard(ctx, state.RunningKey).Result(); err != nil || n != 1 {
			t.Errorf("%s holds %d entries after four releases, %v; want 1 (e)", state.RunningKey, n, err)
		}
		want("a succeeded, b failed, c is gone, d was excluded", 20, 1, "e")

		// e's owner dies: its lock expires, and e is no longer listed.
		// Its entry goes when e's next attempt ends.
		b.expire(1100 * time.Millisecond)
		want("e's lock expired", 20, 0)
		again := begin("e", "E2")
		want("e's next attempt", 20, 1, "e")
		if _, _, err := b.st.Succeed(ctx, state.SuccessArgs{User: "e", Token: "E2", Host: "mail-a", Destination: "tcp:b:1",
			Start: again.Start, TTL: time.Second}); err != nil {
			t.Fatal(err)
		}
		if n, err := b.rdb.ZCard(ctx, state.RunningKey).Result(); err != nil || n != 0 {
			t.Errorf("%s holds %d entries once e's next attempt ended, %v; want none", state.RunningKey, n, err)
		}

		// f's owner dies, and f is excluded: the next event for f ends
		// the entry, as no attempt of f will.
		begin("f", "F")
		b.expire(1100 * time.Millisecond)
		if err := b.st.Exclude(ctx, "f"); err != nil {
			t.Fatal(err)
		}
		if c, err := b.st.Begin(ctx, state.BeginArgs{User: "f", Host: "mail-a", Owner: "inst-G", Token: "G",
			Destination: "tcp:b:1", At: time.Now(), TTL: time.Second, Margin: 100 * time.Millisecond}); err != nil || c.Decision != state.Excluded {
			t.Fatalf("Begin of the excluded f: %+v, %v", c, err)
		}
		if n, err := b.rdb.ZCard(ctx, state.RunningKey).Result(); err != nil || n != 0 {
			t.Errorf("%s holds %d entries after an event for the excluded f, %v; want none", state.RunningKey, n, err)
		}
	})
}

// Running only reads: the status can be read from a replica, also while
// the set holds the entry of an owner that died.
func TestRunning_ReadsFromAReplica(t *testing.T) {
	primary := redistest.Start(t)
	replica := redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
	st := state.New(primary.Client(t))
	for _, a := range []struct {
		user string
		ttl  time.Duration
	}{{"dead", 300 * time.Millisecond}, {"u1", time.Minute}} {
		if _, err := st.Begin(ctx, state.BeginArgs{User: a.user, Host: "mail-a", Owner: "inst-A", Token: "A" + a.user,
			Destination: "tcp:b:1", At: time.Now(), TTL: a.ttl, Margin: 100 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	ro := state.New(replica.Client(t))
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, sts, err := ro.Running(ctx, 20)
		if err != nil {
			t.Fatalf("Running on a replica: %v", err)
		}
		if n == 1 && len(sts) == 1 && sts[0].User == "u1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica lists %d %+v, want u1 alone (dead's lock expired)", n, sts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n, err := primary.Client(t).ZCard(ctx, state.RunningKey).Result(); err != nil || n != 2 {
		t.Errorf("%s holds %d entries, %v; want 2: the dead owner's stays until a script drops it", state.RunningKey, n, err)
	}
}

// The late outcome of an owner whose lock expired, and that nobody took,
// drops its entry: no later attempt may come (a user gone from a userdb
// the sweep lists).
func TestRedisScripts_RunningLateOutcome(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		for _, tc := range []struct {
			name string
			end  func(user, token string, c state.Claim) error
		}{
			{"success", func(user, token string, c state.Claim) error {
				_, _, err := b.st.Succeed(ctx, state.SuccessArgs{User: user, Token: token, Host: "mail-a", Destination: "tcp:b:1",
					Start: c.Start, TTL: time.Second})
				return err
			}},
			{"failure", func(user, token string, c state.Claim) error {
				_, err := b.st.Fail(ctx, state.FailureArgs{User: user, Token: token, Host: "mail-a", Error: "x", Class: "tempfail",
					At: time.Now(), Final: true, Release: true, Start: c.Start})
				return err
			}},
			{"gone", func(user, token string, c state.Claim) error {
				_, err := b.st.Fail(ctx, state.FailureArgs{User: user, Token: token, Host: "mail-a", Error: "no such user", Class: "no_user",
					At: time.Now(), Release: true, Gone: true, Start: c.Start})
				return err
			}},
		} {
			user := "late-" + tc.name
			c, err := b.st.Begin(ctx, state.BeginArgs{User: user, Host: "mail-a", Owner: "inst-A", Token: "A",
				Destination: "tcp:b:1", At: time.Now(), TTL: time.Second, Margin: 100 * time.Millisecond})
			if err != nil || c.Decision != state.Run {
				t.Fatalf("Begin %s: %+v, %v", user, c, err)
			}
			b.expire(1100 * time.Millisecond)
			if err := tc.end(user, "A", c); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if _, err := b.rdb.ZScore(ctx, state.RunningKey, user).Result(); err == nil {
				t.Errorf("a late %s left %s in %s", tc.name, user, state.RunningKey)
			}
		}
	})
}

// A retry (Restart) and a rerun (Succeed with newer changes) start a new
// attempt: the user stays running, from the new attempt's start.
func TestRedisScripts_RunningFollowsTheAttempt(t *testing.T) {
	onBothRedis(t, func(t *testing.T, b backend) {
		first := begin(t, b, "A", time.Now())
		time.Sleep(5 * time.Millisecond)
		retry, err := b.st.Restart(ctx, "u1", "A", "tcp:b:1", time.Second)
		if err != nil || retry.Decision != state.Run || !retry.Start.After(first.Start) {
			t.Fatalf("Restart: %+v, %v (first start %v)", retry, err, first.Start)
		}
		n, sts, err := b.st.Running(ctx, 20)
		if err != nil || n != 1 || len(sts) != 1 || !sts[0].InProgressSince.Equal(retry.Start) {
			t.Fatalf("after a retry: %d %+v, %v; want u1 since %v", n, sts, err, retry.Start)
		}
		// A change during the attempt: the owner runs again.
		if _, err := b.st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "inst-B", Token: "B",
			Destination: "tcp:b:1", At: time.Now(), TTL: time.Second, Margin: 100 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		next := succeed(t, b, "A", retry.Start, true)
		if next.Decision != state.Run {
			t.Fatalf("no rerun: %+v", next)
		}
		if n, users := running(t, b, 20); n != 1 || !slices.Equal(users, []string{"u1"}) {
			t.Errorf("during the rerun: %d %v, want u1", n, users)
		}
		succeed(t, b, "A", next.Start, true)
		if n, users := running(t, b, 20); n != 0 {
			t.Errorf("after the rerun succeeded: %d %v, want none", n, users)
		}
	})
}
