// Package state keeps dovewarden's per-user replication state in Redis:
// users waiting for replication, and (with the sync function) locks,
// coalescing marks and status records.
//
// Keys put the username in a hash tag ({user}) so every key of one user
// lands in one Redis Cluster slot.
package state

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Keys. Prefix is shared by every key dovewarden writes.
const (
	Prefix = "dovewarden:"
	// PendingKey is a sorted set of users that need a replication, scored by
	// the Unix milliseconds of their oldest unreplicated change. The sweep
	// reads it.
	PendingKey = Prefix + "pending"
)

// UserKey is the hash holding one user's replication status.
func UserKey(user string) string { return Prefix + "user:{" + user + "}" }

// Fields of UserKey.
const (
	FieldPendingHost = "pending_host"
)

// Store is dovewarden's Redis state.
type Store struct {
	rdb redis.UniversalClient
	// handshakes, of a Store that Open made, tells why a command
	// that had to dial over TLS ran out of time (explain).
	handshakes *handshakeWatch
	// pair is redis-cert-file and redis-key-file, and ca redis-ca-file,
	// of a Store that Open made with them.
	pair *clientPair
	ca   *config.CAFile
}

// New wraps a go-redis client.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Close closes the connection pool.
func (s *Store) Close() error { return s.rdb.Close() }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.explain(s.rdb.Ping(ctx).Err()) }

// MarkPending records that user has a change on host at time at that has
// not been handed to a sync function, so the sweep replicates the user
// later. The oldest pending time wins. A zero time (or one not after
// 1970) means now, as in Begin: a year-1 mark would never be replaced
// (ZADD LT) and would read as no change at all.
func (s *Store) MarkPending(ctx context.Context, user, host string, at time.Time) error {
	if at.UnixMilli() <= 0 {
		at = time.Now()
	}
	err := scriptMarkPending.Run(ctx, s.rdb, []string{PendingKey, UserKey(user)}, user, at.UnixMilli(), host).Err()
	if err != nil {
		return fmt.Errorf("mark user %q pending in redis: %w", user, err)
	}
	return nil
}

// tx runs fn's commands in one MULTI/EXEC. A command Redis refused as it
// queued it (READONLY on a replica, OOM on a full server) makes EXEC answer
// only "EXECABORT Transaction discarded because of previous errors": the
// error returned is then that command's, which says why.
func (s *Store) tx(ctx context.Context, fn func(redis.Pipeliner) error) error {
	cmds, err := s.rdb.TxPipelined(ctx, fn)
	if err != nil {
		for _, c := range cmds {
			if cerr := c.Err(); cerr != nil {
				return cerr
			}
		}
	}
	return err
}

// Pending returns users waiting for replication, oldest first, with the
// time of their oldest unreplicated change.
func (s *Store) Pending(ctx context.Context, limit int64) ([]PendingUser, error) {
	if limit <= 0 {
		return nil, nil
	}
	zs, err := s.rdb.ZRangeWithScores(ctx, PendingKey, 0, limit-1).Result()
	if err != nil {
		return nil, fmt.Errorf("read pending users from redis: %w", err)
	}
	// The host of a change marked since the running attempt began, or
	// else the running attempt's own: each attempt's start clears the
	// mark's host, while the user stays pending until it succeeds. One
	// round trip for them all.
	hosts := make([]*redis.SliceCmd, len(zs))
	if len(zs) > 0 {
		_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, z := range zs {
				user, _ := z.Member.(string)
				hosts[i] = p.HMGet(ctx, UserKey(user), FieldPendingHost, FieldInProgressHost)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read the hosts of %d pending users from redis: %w", len(zs), err)
		}
	}
	out := make([]PendingUser, 0, len(zs))
	for i, z := range zs {
		user, _ := z.Member.(string)
		var host string
		for _, h := range hosts[i].Val() {
			if v, _ := h.(string); host == "" {
				host = v
			}
		}
		out = append(out, PendingUser{User: user, Host: host, Since: time.UnixMilli(int64(z.Score)).UTC()})
	}
	return out, nil
}

// PendingUser is one entry of the pending set; Host is where its change
// was seen, or else where its last dsync attempt ran from (its running
// one, or one whose owner died).
type PendingUser struct {
	User  string    `json:"user"`
	Host  string    `json:"host,omitempty"`
	Since time.Time `json:"since"`
}
