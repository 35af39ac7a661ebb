package state

import (
	"context"
	"fmt"
	"time"
)

// Now is the Redis server's clock (TIME): the clock the sync function's
// decisions use. Ingest stamps changes with it, so that "a dsync started
// after the change was seen" is one comparison on one clock.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	t, err := s.rdb.Time(ctx).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis TIME: %w", err)
	}
	return t.UTC(), nil
}
