package replicator

import (
	"context"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// TestReplicate_LagCountsFromTheOldestChangeNotYetCovered: a replication
// reports its lag (replication.succeeded's lag_ms, the lag histogram)
// from the oldest change it covered. A change an earlier dsync covered is
// not one: the user asked for again after a dsync during which a change
// came reports the lag of that change, not of the change an hour old that
// the first dsync replicated. It reported the hour again, and so did
// every replication of a user whose changes kept arriving during its
// dsyncs, for as long as they did.
func TestReplicate_LagCountsFromTheOldestChangeNotYetCovered(t *testing.T) {
	o := fast
	o.MaxRounds = 1
	f := newFixture(t, o)
	started, release := f.hold(t, true)
	old := time.Now().Add(-time.Hour)
	done := make(chan change.Result, 1)
	go func() { done <- f.replicate(t, change.Request{User: "u1", Host: "mail-a", Time: old}) }()
	<-started
	if res := f.replicate(t, change.Request{User: "u1", Host: "mail-a", Time: time.Now()}); res.Outcome != change.Coalesced {
		t.Fatalf("change during the dsync: %+v", res)
	}
	release()
	first := <-done
	if first.Outcome != change.Synced || first.Lag < time.Hour {
		t.Fatalf("first replication %+v: want synced, with the hour-old change's lag", first)
	}
	f.notes.mu.Lock()
	asked := append([]asked(nil), f.notes.asked...)
	f.notes.mu.Unlock()
	if len(asked) != 1 {
		t.Fatalf("asked again %+v, want once", asked)
	}
	res := f.replicate(t, change.Request{User: "u1", Host: "mail-a", Time: asked[0].at})
	if res.Outcome != change.Synced || res.Lag >= time.Hour/2 {
		t.Errorf("replication asked for again: %+v, want the lag of the change during the first dsync, not of the hour-old one it covered", res)
	}
	if st, _ := f.st.Status(context.Background(), "u1"); !st.PendingSince.IsZero() {
		t.Errorf("still pending: %+v", st)
	}
}
