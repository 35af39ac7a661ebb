package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestMarkUndelivered_NormalisesTheUser: an administrator's replication
// request a stop held names the user as typed ("Alice"); its pending mark
// is the normalised name, the one the sync replicates and so clears. A
// mark of "Alice" would stay for ever, and have every sweep ask for her.
func TestMarkUndelivered_NormalisesTheUser(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	st := state.New(rdb)
	ev, err := contract.Requested(change.Request{User: "Alice", Host: "mail-a", Time: time.Now(), Priority: change.High}, "admin", "dovewarden/cli")
	if err != nil {
		t.Fatal(err)
	}
	uf, err := dovecot.ParseUsernameFormat(dovecot.DefaultUsernameFormat)
	if err != nil {
		t.Fatal(err)
	}
	markUndelivered(st, []broker.Held{{Trigger: "sync-high", Phase: broker.PhaseDeliver, Event: ev}}, uf, false,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	users, err := rdb.ZRange(context.Background(), state.PendingKey, 0, -1).Result()
	if err != nil || len(users) != 1 || users[0] != "alice" {
		t.Errorf("pending %q, %v; want alice", users, err)
	}
}
