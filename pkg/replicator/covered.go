package replicator

import (
	"sync"
	"time"
)

// coverCache remembers, per user, the start (Redis clock) of the latest
// successful dsync this instance saw: recorded by a Succeed it ran, or
// reported by Begin for a covered change. A change stamped with the Redis
// clock (Observed) before that start is covered by a dsync that succeeded,
// so it can be acknowledged without a Redis round trip. Every value is one
// Redis held at some point and last_start only grows, so a stale entry only
// makes the cache miss, never claim too much. Under load most events of a
// busy user are such changes, waiting in a lane behind the user's dsync.
type coverCache struct {
	mu  sync.Mutex
	m   map[string]time.Time
	max int
}

func newCoverCache(max int) *coverCache {
	return &coverCache{m: make(map[string]time.Time), max: max}
}

// covers reports whether a dsync of user that started after observed is
// known to have succeeded.
func (c *coverCache) covers(user string, observed time.Time) bool {
	c.mu.Lock()
	start, ok := c.m[user]
	c.mu.Unlock()
	return ok && observed.Before(start)
}

// record notes a successful dsync of user that started at start.
func (c *coverCache) record(user string, start time.Time) {
	if start.IsZero() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.m[user]; ok && !start.After(prev) {
		return
	}
	if len(c.m) >= c.max {
		// Bounded memory: forget everything rather than track recency; the
		// cost is a Redis round trip per user until it is learnt again.
		clear(c.m)
	}
	c.m[user] = start
}
