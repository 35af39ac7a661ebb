package main

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestRetryWhenDue_ReadsRedisClock runs the retry sweeps' timer against a
// Redis whose clock lags this process's by 3 s, with a user failed 1 s
// ago by Redis's clock and a retry interval of 2 s: the retry is due 1 s
// from now by Redis's clock, which the sweep decides by, but was due 2 s
// ago by this process's. It must be asked for once it is due on Redis's
// clock, not at once (the sweep would find it not due) and then a whole
// interval later.
func TestRetryWhenDue_ReadsRedisClock(t *testing.T) {
	mr := miniredis.RunT(t)
	lag := 3 * time.Second
	mr.SetTime(time.Now().Add(-lag))
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "t", Token: "tok", Destination: "tcp:b:1", TTL: 30 * time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatalf("Begin: %+v %v", c, err)
	}
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tok", Host: "mail-a", Error: "exit code 75", Class: "tempfail",
		ExitCode: 75, Start: c.Start, Final: true, Release: true}); err != nil {
		t.Fatal(err)
	}
	// Redis's clock moves on 1 s (the user failed 1 s ago by it).
	start := time.Now()
	mr.SetTime(start.Add(-lag + time.Second))
	go func() {
		// miniredis's clock stands still unless moved: keep it lagging.
		for ctx.Err() == nil {
			mr.SetTime(time.Now().Add(-lag + time.Second))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var asked atomic.Int64
	at := make(chan time.Duration, 10)
	go retryWhenDue(ctx, st, 2*time.Second, func() { asked.Add(1); at <- time.Since(start) }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	select {
	case d := <-at:
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
// later by TIME, while Now has been past that all along. Asked for at
// once, the sweep would find the user not due, and the next retry would
// come a whole interval later.
func TestRetryWhenDue_AfterTheRedisClockSteppedBack(t *testing.T) {
	mr := miniredis.RunT(t)
	start := time.Now()
	mr.SetTime(start)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "t", Token: "tok", Destination: "tcp:b:1", TTL: 30 * time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatalf("Begin: %+v %v", c, err)
	}
	step := 5 * time.Second
	mr.SetTime(time.Now().Add(-step))
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tok", Host: "mail-a", Error: "exit code 75", Class: "tempfail",
		ExitCode: 75, Start: c.Start, Final: true, Release: true}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for ctx.Err() == nil {
			mr.SetTime(time.Now().Add(-step))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	at := make(chan time.Duration, 10)
	go retryWhenDue(ctx, st, 2*time.Second, func() { at <- time.Since(start) }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	select {
	case d := <-at:
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
	mr := miniredis.RunT(t)
	mr.SetTime(time.Now())
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fail := func(user string) {
		t.Helper()
		c, err := st.Begin(ctx, state.BeginArgs{User: user, Host: "mail-a", Owner: "t", Token: "tok-" + user, Destination: "tcp:b:1", TTL: 30 * time.Second})
		if err != nil || c.Decision != state.Run {
			t.Fatalf("Begin %s: %+v %v", user, c, err)
		}
		if _, err := st.Fail(ctx, state.FailureArgs{User: user, Token: "tok-" + user, Host: "mail-a", Error: "exit code 75", Class: "tempfail",
			ExitCode: 75, Start: c.Start, Final: true, Release: true}); err != nil {
			t.Fatal(err)
		}
	}
	fail("u1")
	// TIME steps back 10 s: u1's retry is due 12 s away by it.
	step := 10 * time.Second
	mr.SetTime(time.Now().Add(-step))
	go func() {
		for ctx.Err() == nil {
			mr.SetTime(time.Now().Add(-step))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	every := 2 * time.Second
	at := make(chan time.Duration, 10)
	start := time.Now()
	go retryWhenDue(ctx, st, every, func() { at <- time.Since(start) }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	time.Sleep(300 * time.Millisecond)
	fail("u2") // due 2 s from now by TIME
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
// not 2 s (the interval) after.
func TestRetryWhenDue_NextUserWhenItIsDue(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.SetTime(time.Now())
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for ctx.Err() == nil {
			mr.SetTime(time.Now())
			time.Sleep(10 * time.Millisecond)
		}
	}()
	fail := func(user string) {
		t.Helper()
		c, err := st.Begin(ctx, state.BeginArgs{User: user, Host: "mail-a", Owner: "t", Token: "tok-" + user, Destination: "tcp:b:1", TTL: 30 * time.Second})
		if err != nil || c.Decision != state.Run {
			t.Fatalf("Begin %s: %+v %v", user, c, err)
		}
		if _, err := st.Fail(ctx, state.FailureArgs{User: user, Token: "tok-" + user, Host: "mail-a", Error: "exit code 75", Class: "tempfail",
			ExitCode: 75, Start: c.Start, Final: true, Release: true}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	fail("u1")
	time.Sleep(time.Second)
	fail("u2")
	every := 2 * time.Second
	at := make(chan time.Duration, 10)
	// The sweep retries the users due, here with success: they leave the
	// failed set.
	ask := func() {
		now := time.Now()
		due, _ := rdb.ZRangeByScore(ctx, state.FailedKey, &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(now.Add(-every).UnixMilli(), 10)}).Result()
		for _, u := range due {
			rdb.ZRem(ctx, state.FailedKey, u)
		}
		at <- time.Since(start)
	}
	go retryWhenDue(ctx, st, every, ask, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var asked []time.Duration
	for len(asked) < 2 {
		select {
		case d := <-at:
			asked = append(asked, d)
		case <-time.After(6 * time.Second):
			t.Fatalf("retries asked for at %v; want two, for u1 and for u2", asked)
		}
	}
	if asked[0] < every || asked[1]-asked[0] > 1600*time.Millisecond {
		t.Errorf("retries asked for at %v after the first failure: want u1's at 2 s, then u2's about 1 s later (u2 failed 1 s after u1), not an interval (%s) later", asked, every)
	}
}
