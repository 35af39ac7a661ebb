package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"testing/fstest"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
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

// TestOwnEvents_WaitForARoomInAFullLane: an event the sync function sends
// of its own accord (an alert, a request) into a lane that is full for a
// moment goes in once there is room, as its posts to a Broker on a cluster
// are retried, rather than being lost at once.
func TestOwnEvents_WaitForARoomInAFullLane(t *testing.T) {
	cfg, err := broker.Load(fstest.MapFS{"b.yaml": {Data: []byte(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: b
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
  annotations:
    dovewarden.org/workers: "1"
    dovewarden.org/queue-size: "1"
spec:
  broker: b
  filter:
    attributes:
      type: x
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: sub
`)}})
	if err != nil {
		t.Fatal(err)
	}
	release, got := make(chan struct{}), make(chan string, 10)
	b, err := broker.New(cfg, broker.Options{Handlers: map[string]broker.Handler{"sub": func(ctx context.Context, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		got <- ev.ID()
		<-release
		return nil, nil
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = b.Shutdown(context.Background()) })
	own := &ownEvents{}
	own.b.Store(b)
	ev := func(id string) cloudevents.Event {
		e := cloudevents.NewEvent()
		e.SetID(id)
		e.SetSource("test")
		e.SetType("x")
		return e
	}
	if err := b.Publish(context.Background(), ev("held")); err != nil { // delivered, and held by the handler
		t.Fatal(err)
	}
	<-got
	if err := b.Publish(context.Background(), ev("queued")); err != nil { // the lane's one place
		t.Fatal(err)
	}
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	if err := own.Send(context.Background(), ev("own")); err != nil {
		t.Fatalf("the function's own event into a lane full for 100 ms: %v", err)
	}
}
