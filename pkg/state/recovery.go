package state

import (
	"context"
	"fmt"
	"time"
)

// RecoveryKey holds the Unix milliseconds (Redis's clock) of the last
// start of `dovewarden local`, or of an
// administrator's request for a sweep of every user (RaiseRecovery),
// whichever is later. Dovecot's exporter dropped the events of every
// change made while no run was listening, a run that crashed lost the
// changes queued in its in-memory broker, and a change the Broker
// dead-lettered left no mark, so any user whose last successful dsync
// started before this time may have an unreplicated change: the sweep
// requests each such user (reason "recovery"). The key expires after the
// full-sync interval, when every one of those users is due for a full
// sync anyway.
const RecoveryKey = Prefix + "recovery"

// scriptRaiseRecovery: KEYS recovery. ARGV time in ms (0 or less: now),
// TTL in ms (0: none). Returns the recovery time in force.
var scriptRaiseRecovery = newScript(luaPrelude + `
-- The sweep compares the recovery time with dsync starts, which are never
-- before the clock's high-water mark (CLOCK): after a step back of TIME,
-- TIME would put it before dsyncs that started earlier, and their users'
-- changes since would not be requested. Past the mark, too: a dsync that
-- started in the millisecond it names started before this call.
local now = math.max(now_ms(), num(redis.call('GET', CLOCK)) + 1)
local at = num(ARGV[1])
if at <= 0 or at > now then at = now end
local cur = num(redis.call('GET', KEYS[1]))
if cur > at then return tostring(cur) end
local ttl = num(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], at, 'PX', ttl)
else
  redis.call('SET', KEYS[1], at)
end
return tostring(at)
`)

// SetRecovery makes RecoveryKey Redis's now, expiring after ttl (0:
// never), at a start of local mode, and returns the time in force (a
// later one already set, with its expiry, if Redis's clock stepped back).
// Now is never before the latest attempt start recorded (ClockKey), as
// dsync starts are not.
func (s *Store) SetRecovery(ctx context.Context, ttl time.Duration) (time.Time, error) {
	return s.raiseRecovery(ctx, 0, ttl)
}

// RaiseRecovery makes RecoveryKey at least at (at most Redis's now: a
// clock ahead does not reach into the future), expiring after ttl (0:
// never), and returns the recovery time in force: an administrator's
// sweep of every user (dovewarden sweep --all) has the sweep request each
// user whose last successful dsync started before the request. A later
// time already set stays, with its expiry; the same request delivered
// again changes nothing.
func (s *Store) RaiseRecovery(ctx context.Context, at time.Time, ttl time.Duration) (time.Time, error) {
	return s.raiseRecovery(ctx, max(at.UnixMilli(), 1), ttl)
}

func (s *Store) raiseRecovery(ctx context.Context, atMS int64, ttl time.Duration) (time.Time, error) {
	v, err := scriptRaiseRecovery.Run(ctx, s.rdb, []string{RecoveryKey}, atMS, ttl.Milliseconds()).Text()
	if err != nil {
		return time.Time{}, fmt.Errorf("set the recovery time in redis: %w", err)
	}
	return msField(v), nil
}

// LockHeld reports whether any user's lock (LockKey) exists. At the start
// of the only process using this Redis, one is a dead run's: it expires
// after the lock TTL, and the sweep skips the user until then.
func (s *Store) LockHeld(ctx context.Context) (bool, error) {
	var cursor uint64
	for {
		keys, next, err := s.rdb.Scan(ctx, cursor, Prefix+"lock:{*}", 1000).Result()
		if err != nil {
			return false, fmt.Errorf("look for locks in redis: %w", err)
		}
		if len(keys) > 0 {
			return true, nil
		}
		if next == 0 {
			return false, nil
		}
		cursor = next
	}
}
