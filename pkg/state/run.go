package state

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RecoveryKey holds the Unix milliseconds (Redis's clock) of the last time
// a `dovewarden local` started and found that its previous run had not
// stopped cleanly. That run's embedded broker held accepted changes in
// memory only, so any user whose last successful dsync started before this
// time may have lost one: the sweep requests each such user (reason
// "recovery"). It expires after the full-sync interval, when every one of
// those users is due for a full sync anyway.
const RecoveryKey = Prefix + "recovery"

// RunKey is set while a `dovewarden local` runs and deleted when it stops
// cleanly (every queued change delivered or marked pending). instance
// names the process the same way across restarts: its host name and
// listen address.
func RunKey(instance string) string { return Prefix + "local:run:" + instance }

// scriptRunBegin: KEYS run, recovery. ARGV this run's description, the
// recovery mark's TTL in ms (0: none). Returns {previous run, recovery
// ms}, both empty when the previous run stopped cleanly (or there was none).
var scriptRunBegin = redis.NewScript(luaPrelude + `
local prev = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if not prev then return {'', ''} end
local now = now_ms()
local ttl = num(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[2], now, 'PX', ttl)
else
  redis.call('SET', KEYS[2], now)
end
return {prev, tostring(now)}
`)

// scriptRunEnd: KEYS run. ARGV this run's description. Deletes the run's
// key only if it is still this run's.
var scriptRunEnd = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Unclean describes a previous run found at RunBegin that did not stop
// cleanly.
type Unclean struct {
	// Run is that run's description, as it gave it to RunBegin.
	Run string
	// Recovery is the time now in RecoveryKey.
	Recovery time.Time
}

// RunBegin records that the run described by run (unique to this process)
// holds changes in memory for instance. If the previous run of instance
// never called RunEnd, it returns that run and sets RecoveryKey to now,
// expiring after recoveryTTL (0: never).
func (s *Store) RunBegin(ctx context.Context, instance, run string, recoveryTTL time.Duration) (*Unclean, error) {
	v, err := scriptRunBegin.Run(ctx, s.rdb, []string{RunKey(instance), RecoveryKey}, run, recoveryTTL.Milliseconds()).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("record this run in redis: %w", err)
	}
	if len(v) != 2 || v[0] == "" {
		return nil, nil
	}
	return &Unclean{Run: v[0], Recovery: msField(v[1])}, nil
}

// RunEnd records that the run stopped cleanly: nothing it accepted is
// lost. A key another run has taken over is left alone.
func (s *Store) RunEnd(ctx context.Context, instance, run string) error {
	if err := scriptRunEnd.Run(ctx, s.rdb, []string{RunKey(instance)}, run).Err(); err != nil && err != redis.Nil {
		return fmt.Errorf("record the clean stop in redis: %w", err)
	}
	return nil
}
