package state

import (
	"context"
	"fmt"
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
	v, err := scriptNow.Run(ctx, s.rdb, []string{ClockKey}).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis clock: %w", err)
	}
	return time.UnixMilli(v).UTC(), nil
}
