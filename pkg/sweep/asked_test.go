package sweep

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// answerGone plays the sync function for each request as a lane would
// run it: the dsync answers exit code 67, the user is gone (its record
// dropped).
func answerGone(t *testing.T, f *fixture, reqs []Request, batch string) {
	t.Helper()
	ctx := context.Background()
	for i, r := range reqs {
		token := fmt.Sprintf("%s-%d", batch, i)
		c, err := f.st.Begin(ctx, state.BeginArgs{User: r.User, Host: r.Host, Token: token, Destination: "d", At: r.Time, TTL: time.Minute, Full: r.Full})
		if err != nil {
			t.Fatal(err)
		}
		if c.Decision != state.Run {
			continue
		}
		if _, err := f.st.Fail(ctx, state.FailureArgs{User: r.User, Token: token, Host: r.Host, Error: "exit code 67", Class: "no_user",
			ExitCode: 67, Final: true, Release: true, Full: r.Full, Start: c.Start, Gone: true}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSweep_FailedRetryNotAskedAgainWhileItWaits: a failed user's retry
// the sweep asked for may wait in a lane behind other work longer than the
// failed-retry interval. The sweeps that come meanwhile (every 5 minutes
// on a cluster) ask again only once that interval has passed since the
// retry was asked for: each copy would run a failing dsync when the lane
// gets to it.
func TestSweep_FailedRetryNotAskedAgainWhileItWaits(t *testing.T) {
	o := testOptions()
	f := newFixture(t, o, "u1")
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	f.mr.SetTime(t0)
	f.synced(t, "u1", time.Hour, true)
	f.failed(t, "u1", 0)
	// Retry sweeps every 2 minutes for 20 minutes; none of the requests
	// runs (the lane is behind).
	for m := 2; m <= 20; m += 2 {
		f.mr.SetTime(t0.Add(time.Duration(m) * time.Minute))
		f.run(t)
	}
	reqs := f.snd.all()
	var at []string
	for _, r := range reqs {
		at = append(at, r.Time.Sub(t0).String())
	}
	// Due at 5 min (the first sweep after it: 6), then 5 min after that
	// request (12, 18).
	if len(reqs) != 3 {
		t.Fatalf("retries asked at %v after the failure; want 3, one per failed-retry interval (%v)", at, o.FailedRetryInterval)
	}
	// An administrator's sweep retries at once all the same.
	before := len(f.snd.all())
	f.mr.SetTime(t0.Add(21 * time.Minute))
	res, err := f.sw.Step(context.Background(), "admin", nil)
	for err == nil && res.Next != nil {
		res, err = f.sw.Step(context.Background(), "admin", res.Next)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := len(f.snd.all()) - before; got != 1 {
		t.Errorf("an administrator's sweep asked for the failed user %d times, want once", got)
	}
}

// TestSweep_GoneUserNotAskedForRecoveryAtEverySweep: while the recovery
// time is set (a local start on a lasting Redis, `dovewarden sweep
// --all`), a user a host lists but the sync finds gone (exit code 67
// drops its record, last_start with it) is asked for once, not at every
// sweep: once per full-sync interval, and once with periodic full syncs
// off (the recovery time then never expires).
func TestSweep_GoneUserNotAskedForRecoveryAtEverySweep(t *testing.T) {
	for _, iv := range []time.Duration{24 * time.Hour, 0} {
		t.Run(fmt.Sprint("full-sync interval ", iv), func(t *testing.T) {
			o := testOptions()
			o.FullSyncInterval = iv
			f := newFixture(t, o, "gone")
			t0 := time.Now().UTC().Truncate(time.Millisecond)
			f.mr.SetTime(t0)
			if _, err := f.st.RaiseRecovery(context.Background(), t0, iv); err != nil {
				t.Fatal(err)
			}
			var per []string
			seen := 0
			for h := 1; h <= 6; h++ {
				f.mr.SetTime(t0.Add(time.Duration(h) * time.Hour))
				f.run(t)
				all := f.snd.all()
				got := all[seen:]
				seen = len(all)
				for _, r := range got {
					per = append(per, fmt.Sprintf("%dh:%s", h, r.Reason))
				}
				answerGone(t, f, got, fmt.Sprint("h", h))
			}
			if seen != 1 {
				t.Errorf("the gone user was asked for %v in 6 hourly sweeps; want once", per)
			}
		})
	}
}

// TestSweep_FailureStampedAheadIsDue: a failure recorded while Redis's
// clock ran ahead (a failover to a host whose clock was wrong) does not
// hold the user's retry back once the clock is right again.
func TestSweep_FailureStampedAheadIsDue(t *testing.T) {
	f := newFixture(t, testOptions(), "u1")
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	f.mr.SetTime(t0)
	f.synced(t, "u1", time.Hour, true)
	f.failed(t, "u1", -6*time.Hour)
	f.mr.SetTime(t0.Add(10 * time.Minute))
	f.run(t)
	if reqs := f.snd.all(); len(reqs) != 1 || reqs[0].Reason != ReasonFailed {
		t.Errorf("requests %+v: want the failed user's retry", reqs)
	}
}

// TestSweep_RecordsArePruned: a finished sweep drops the retries it asked
// for once they are older than the failed-retry interval, and the users
// found gone before the recovery time (all of them without one), so the
// sets hold the users that may still wait in a lane or were found gone
// during a recovery, not every user ever retried or deleted.
func TestSweep_RecordsArePruned(t *testing.T) {
	for _, recovery := range []bool{false, true} {
		t.Run(fmt.Sprint("recovery time set ", recovery), func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, testOptions(), "u1")
			t0 := time.Now().UTC().Truncate(time.Millisecond)
			f.mr.SetTime(t0)
			if recovery {
				if _, err := f.st.RaiseRecovery(ctx, t0, 0); err != nil {
					t.Fatal(err)
				}
			}
			f.synced(t, "u1", -time.Second, true) // after the recovery time
			f.failed(t, "u1", 10*time.Minute)
			f.rdb.ZAdd(ctx, state.SweepGoneKey, redis.Z{Score: float64(t0.Add(time.Second).UnixMilli()), Member: "old"})
			f.run(t)
			if n := f.rdb.ZCard(ctx, state.SweepAskedKey).Val(); n != 1 {
				t.Fatalf("%d retries recorded, want u1's", n)
			}
			f.rdb.ZRem(ctx, state.FailedKey, "u1") // its retry succeeded
			f.mr.SetTime(t0.Add(time.Hour))
			f.run(t)
			if n := f.rdb.ZCard(ctx, state.SweepAskedKey).Val(); n != 0 {
				t.Errorf("%d retries recorded an hour later, want none", n)
			}
			want := int64(0)
			if recovery {
				want = 1 // found gone after the recovery time: kept while it lasts
			}
			if n := f.rdb.ZCard(ctx, state.SweepGoneKey).Val(); n != want {
				t.Errorf("%d users recorded gone, want %d", n, want)
			}
		})
	}
}

// TestSweep_LostRecoveryRequestIsAskedAgain: a recovery request that never
// ran (lost on its way: an in-memory channel restarted) is asked for again
// by the next sweep, until the user's dsync has started after the
// recovery time; only a user found gone since is left alone.
func TestSweep_LostRecoveryRequestIsAskedAgain(t *testing.T) {
	f := newFixture(t, testOptions(), "u1")
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	f.mr.SetTime(t0)
	f.synced(t, "u1", time.Hour, true)
	if _, err := f.st.RaiseRecovery(context.Background(), t0, 0); err != nil {
		t.Fatal(err)
	}
	for h := 1; h <= 2; h++ {
		f.mr.SetTime(t0.Add(time.Duration(h) * time.Hour))
		f.run(t)
	}
	var reasons []Reason
	for _, r := range f.snd.all() {
		reasons = append(reasons, r.Reason)
	}
	if len(reasons) != 2 || reasons[0] != ReasonRecovery || reasons[1] != ReasonRecovery {
		t.Errorf("requests %v: want recovery at both sweeps", reasons)
	}
}
