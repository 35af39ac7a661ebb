package state

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// ClockKey holds the clock's high-water mark: the latest attempt start
// recorded, in Unix milliseconds.
const ClockKey = Prefix + "clock"

// Now is the sync function's clock: Redis's TIME, in milliseconds, never
// before an attempt start already recorded (ClockKey). Ingest stamps
// changes with it, so that "a dsync started after the change was seen" is
// one comparison on one clock, which holds across a step back of the
// Redis host's clock or a failover to a host whose clock lags.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	v, err := scriptNow.Run(ctx, s.rdb, nil).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis clock: %w", err)
	}
	return time.UnixMilli(v).UTC(), nil
}

// Time is Redis's own clock (TIME) in milliseconds, without Now's
// high-water mark: the clock failures are stamped with and the sweep
// decides by (a failed user's retry is due FailedRetryInterval after its
// failure by it). After a step back of TIME, Now stays at the latest
// attempt start, ahead of it.
func (s *Store) Time(ctx context.Context) (time.Time, error) {
	v, err := scriptTime.Run(ctx, s.rdb, nil).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis clock: %w", err)
	}
	return time.UnixMilli(v).UTC(), nil
}

// latestStart is the latest attempt start, in Unix ms, that a script of
// this process answered with (and so recorded in ClockKey).
var latestStart atomic.Int64

func raiseLatestStart(t time.Time) {
	v := t.UnixMilli()
	for {
		cur := latestStart.Load()
		if v <= cur || latestStart.CompareAndSwap(cur, v) {
			return
		}
	}
}

// LatestStart is the latest attempt start this process's sync scripts
// recorded: the clock's high-water mark as far as this process has raised
// it. Where every attempt starts in this process (local mode with the
// embedded Redis), it is ClockKey's value, read without asking Redis.
func LatestStart() time.Time { return time.UnixMilli(latestStart.Load()).UTC() }
