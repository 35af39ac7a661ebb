package main

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// retryFixture is a miniredis whose TIME follows this process's clock,
// moved by an offset a test sets (a Redis clock that lags, or steps
// back), and the state store on it.
type retryFixture struct {
	t   *testing.T
	ctx context.Context
	mr  *miniredis.Miniredis
	rdb *redis.Client
	st  *state.Store
	// mu makes reading offset and moving TIME by it one step, so that
	// the clock's mover cannot put back a TIME of the offset before
	// setOffset (a step back undone for a moment).
	mu     sync.Mutex
	offset time.Duration
}

func newRetryFixture(t *testing.T, offset time.Duration) *retryFixture {
	f := &retryFixture{t: t, mr: miniredis.RunT(t)}
	f.setOffset(offset)
	f.rdb = redis.NewClient(&redis.Options{Addr: f.mr.Addr()})
	t.Cleanup(func() { f.rdb.Close() })
	f.st = state.New(f.rdb)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f.ctx = ctx
	go func() {
		// miniredis's clock stands still unless moved.
		for ctx.Err() == nil {
			f.mu.Lock()
			f.mr.SetTime(time.Now().Add(f.offset))
			f.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return f
}

// setOffset moves Redis's TIME to this process's clock plus d, now.
func (f *retryFixture) setOffset(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offset = d
	f.mr.SetTime(time.Now().Add(d))
}

// begin starts an attempt of user, as sync does.
func (f *retryFixture) begin(user string) state.Claim {
	f.t.Helper()
	c, err := f.st.Begin(f.ctx, state.BeginArgs{User: user, Host: "mail-a", Owner: "t", Token: "tok-" + user, Destination: "tcp:b:1", TTL: 30 * time.Second})
	if err != nil || c.Decision != state.Run {
		f.t.Fatalf("Begin %s: %+v %v", user, c, err)
	}
	return c
}

// fail marks the attempt c of user failed after its last attempt.
func (f *retryFixture) fail(user string, c state.Claim) {
	f.t.Helper()
	if _, err := f.st.Fail(f.ctx, state.FailureArgs{User: user, Token: "tok-" + user, Host: "mail-a", Error: "exit code 75", Class: "tempfail",
		ExitCode: 75, Start: c.Start, Final: true, Release: true}); err != nil {
		f.t.Fatal(err)
	}
}

// run starts the timer with ask, which reports when it is called, from
// start, on the returned channel.
func (f *retryFixture) run(every time.Duration, start time.Time, ask func()) <-chan time.Duration {
	at := make(chan time.Duration, 10)
	go retryWhenDue(f.ctx, f.st, every, func() {
		if ask != nil {
			ask()
		}
		at <- time.Since(start)
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return at
}

// TestRetryWhenDue_ReadsRedisClock runs the retry sweeps' timer against a
// Redis whose clock lags this process's by 3 s, with a user failed 1 s
// ago by Redis's clock and a retry interval of 2 s: the retry is due 1 s
// from now by Redis's clock, which the sweep decides by, but was due 2 s
// ago by this process's. It must be asked for once it is due on Redis's
// clock, not at once (the sweep would find it not due) and then a whole
// interval later.
func TestRetryWhenDue_ReadsRedisClock(t *testing.T) {
	lag := 3 * time.Second
	f := newRetryFixture(t, -lag)
	// The failure is stamped at TIME now-3s, then TIME moves on 1 s.
	f.fail("u1", f.begin("u1"))
	start := time.Now()
	f.setOffset(-lag + time.Second)
	select {
	case d := <-f.run(2*time.Second, start, nil):
		// Due 1 s after start by Redis's clock (plus the timer's 100 ms).
		if d < 900*time.Millisecond {
			t.Fatalf("retry asked for %v after the start: before it was due on Redis's clock", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no retry asked for within 5 s; due 1 s after the start on Redis's clock")
	}
}

// TestRetryWhenDue_AfterTheRedisClockSteppedBack: the sweep decides a
// failed user's retry by Redis's TIME, which the failure was stamped
// with, not by the sync function's clock (state's Now), which stays at the
// latest attempt start while TIME is behind it (a step back, a failover
// to a host whose clock lags). Here TIME stepped back 5 s after the
// user's attempt started, and the user failed then: the retry is due 2 s
// later by TIME, while Now has been past that all along.
func TestRetryWhenDue_AfterTheRedisClockSteppedBack(t *testing.T) {
	f := newRetryFixture(t, 0)
	start := time.Now()
	c := f.begin("u1")
	f.setOffset(-5 * time.Second)
	f.fail("u1", c)
	select {
	case d := <-f.run(2*time.Second, start, nil):
		if d < 1500*time.Millisecond {
			t.Fatalf("retry asked for %v after the failure: before it was due by Redis's TIME, which the sweep decides by", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no retry asked for within 5 s; due 2 s after the failure by Redis's TIME")
	}
}

// TestRetryWhenDue_LooksAgainWithinAnInterval: after Redis's TIME stepped
// back, the oldest failure is in the future by TIME and its retry due
// more than an interval away; a user that fails meanwhile is stamped
// earlier, so it is the oldest now, and its retry is due an interval
// after its failure. The timer must look again within an interval, not
// sleep until the first user's retry.
func TestRetryWhenDue_LooksAgainWithinAnInterval(t *testing.T) {
	f := newRetryFixture(t, 0)
	f.fail("u1", f.begin("u1"))
	// TIME steps back 10 s: u1's retry is due 12 s away by it.
	f.setOffset(-10 * time.Second)
	every := 2 * time.Second
	start := time.Now()
	at := f.run(every, start, nil)
	time.Sleep(300 * time.Millisecond)
	f.fail("u2", f.begin("u2")) // due 2 s from now by TIME
	select {
	case d := <-at:
		if d < 2*time.Second {
			t.Fatalf("retry asked for %v after the start: before u2's was due", d)
		}
	case <-time.After(6 * time.Second):
		t.Fatalf("no retry asked for within 6 s; u2's was due 2.3 s after the start, and the timer looks again every %s at most", every)
	}
}

// TestRetryWhenDue_NextUserWhenItIsDue: after asking for a retry sweep,
// the timer waits until the next failed user's retry is due, not a whole
// interval: u2, failed 1 s after u1, is asked for about 1 s after u1 is,
// not 3 s (the interval) after.
func TestRetryWhenDue_NextUserWhenItIsDue(t *testing.T) {
	f := newRetryFixture(t, 0)
	start := time.Now()
	f.fail("u1", f.begin("u1"))
	time.Sleep(time.Second)
	f.fail("u2", f.begin("u2"))
	every := 3 * time.Second
	// The sweep retries the users due, here with success: they leave the
	// failed set.
	at := f.run(every, start, func() {
		due, _ := f.rdb.ZRangeArgs(f.ctx, redis.ZRangeArgs{Key: state.FailedKey, ByScore: true, Start: "-inf",
			Stop: strconv.FormatInt(time.Now().Add(-every).UnixMilli(), 10)}).Result()
		for _, u := range due {
			f.rdb.ZRem(f.ctx, state.FailedKey, u)
		}
	})
	var asked []time.Duration
	for len(asked) < 2 {
		select {
		case d := <-at:
			asked = append(asked, d)
		case <-time.After(8 * time.Second):
			t.Fatalf("retries asked for at %v; want two, for u1 and for u2", asked)
		}
	}
	// About 1 s apart; an interval (3 s) apart without the fix. The bound
	// between leaves room for a loaded machine.
	if asked[0] < every || asked[1]-asked[0] > 2500*time.Millisecond {
		t.Errorf("retries asked for at %v after the first failure: want u1's at 3 s, then u2's about 1 s later (u2 failed 1 s after u1), not an interval (%s) later", asked, every)
	}
}

// TestRetryWhenDue_AtMostOneSweepATenthOfTheInterval: while a replica is
// down, users fail each at its own time, and stay failed after each retry
// sweep. The timer asks for a retry sweep as retries come due, but at most
// one each tenth of the interval: each sweep reads every failed user.
func TestRetryWhenDue_AtMostOneSweepATenthOfTheInterval(t *testing.T) {
	f := newRetryFixture(t, 0)
	every := 5 * time.Second
	now, err := f.st.Time(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 100 users whose retries come due 20 ms apart, from now on for 2 s.
	for i := range 100 {
		score := now.Add(-every + time.Duration(i)*20*time.Millisecond).UnixMilli()
		if err := f.rdb.ZAdd(f.ctx, state.FailedKey, redis.Z{Score: float64(score), Member: "u" + strconv.Itoa(i)}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	at := f.run(every, start, nil)
	window := 2 * time.Second
	asked := 0
	for deadline := time.After(window); ; {
		select {
		case <-at:
			asked++
			continue
		case <-deadline:
		}
		break
	}
	// One at once, then one each 500 ms at most: 5 within 2 s.
	if limit := int(window/(every/10)) + 1; asked > limit {
		t.Errorf("%d retry sweeps asked for within %s: want at most %d (one each tenth of the %s interval)", asked, window, limit, every)
	}
	if asked == 0 {
		t.Errorf("no retry sweep asked for within %s; the first user's retry was due at once", window)
	}
}

// runningSweeps says a sweep runs for its first n answers.
type runningSweeps struct {
	mu      sync.Mutex
	n, asks int
}

func (r *runningSweeps) SweepStatus(context.Context) (state.SweepStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asks++
	return state.SweepStatus{Running: r.asks <= r.n}, nil
}

func (r *runningSweeps) asked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asks
}

// TestRecoverySweep_WaitsForTheRunningSweep: the sweep that follows the
// expiry of locks a dead run left is asked for only once no sweep runs. A
// request while the sweep at start still runs (of many users) is covered
// by it, though it skipped those users while their locks were held: they
// waited for the next scheduled sweep, with --sweep-every 0 for their
// next change.
func TestRecoverySweep_WaitsForTheRunningSweep(t *testing.T) {
	r := &runningSweeps{n: 3}
	requested := make(chan int, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		recoverySweep(ctx, r, time.Millisecond, 10*time.Millisecond, func() { requested <- r.asked() })
	}()
	select {
	case asks := <-requested:
		if asks != 4 {
			t.Errorf("requested after %d status reads, want 4: once the sweep that ran for 3 had ended", asks)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no sweep requested")
	}
	<-done
	if len(requested) != 0 {
		t.Error("requested twice")
	}

	// A stop while a sweep runs asks for nothing.
	r = &runningSweeps{n: 1 << 30}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		defer close(done)
		recoverySweep(ctx2, r, time.Millisecond, time.Millisecond, func() { t.Error("requested while a sweep ran") })
	}()
	for r.asked() < 3 {
		time.Sleep(time.Millisecond)
	}
	cancel2()
	<-done
}

// TestRetryOnce_AUserPendingForAnInterval: a user that is not failed and
// has been pending for an interval (a change a full lane refused, whose
// event Dovecot never sends again) gets a retry sweep, which takes the
// pending users too, as the cluster's retry PingSource does; it waited
// for the hourly sweep before. A failed user's pending mark is its
// retry's, due by its failure time, and a fresh mark is a change a dsync
// is about to cover: neither asks for one.
func TestRetryOnce_AUserPendingForAnInterval(t *testing.T) {
	const every = 5 * time.Minute
	f := newRetryFixture(t, 0)
	// A failed user whose change came 10 minutes ago, failed just now.
	if err := f.st.MarkPending(f.ctx, "failing", "mail-a", time.Now().Add(-10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	f.fail("failing", f.begin("failing"))
	// A user whose change came a minute ago.
	if err := f.st.MarkPending(f.ctx, "fresh", "mail-a", time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	asked := 0
	wait, err := retryOnce(f.ctx, f.st, every, func() { asked++ })
	if err != nil || asked != 0 {
		t.Fatalf("retryOnce: asked %d times, %v; want none: no failed user's retry is due, no user pending for an interval but a failed one", asked, err)
	}
	if wait < 3*time.Minute || wait > 4*time.Minute+time.Second {
		t.Errorf("looks again in %v, want about 4 minutes: when the fresh user has been pending for an interval", wait)
	}

	// A user pending for 6 minutes, and not failed: asked for at once,
	// looked at again when the failed user's retry is due.
	if err := f.st.MarkPending(f.ctx, "refused", "mail-a", time.Now().Add(-6*time.Minute)); err != nil {
		t.Fatal(err)
	}
	wait, err = retryOnce(f.ctx, f.st, every, func() { asked++ })
	if err != nil || asked != 1 {
		t.Fatalf("retryOnce: asked %d times, %v; want once, for the user pending 6 minutes", asked, err)
	}
	if wait < 4*time.Minute || wait > every {
		t.Errorf("looks again in %v, want about 5 minutes: when the failed user's retry is due", wait)
	}
}
