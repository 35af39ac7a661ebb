package replicator

import (
	"context"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// TestReplicate_OlderChangesLeftWhileBusyAreCountedAsCoalesced: changes
// that arrive while the user's dsync runs but happened before it started
// (queued behind it: unstamped, or seen on another host, so they go to
// Redis and find the lock held) are covered by that dsync, which needs no
// rerun for them. replication.succeeded counts them in coalesced ("the
// event itself plus those that arrived while the user's dsync ran"), as it
// counts such changes merged in-process. Before, Succeed dropped their
// count with the pending entry, and the event said 1.
func TestReplicate_OlderChangesLeftWhileBusyAreCountedAsCoalesced(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  func(old time.Time) change.Request
	}{
		{"unstamped", func(old time.Time) change.Request { return change.Request{User: "u1", Host: "mail-a", Time: old} }},
		{"stamped, from another host", func(old time.Time) change.Request {
			return change.Request{User: "u1", Host: "mail-b", Time: old, Observed: old}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fast)
			started, free := f.hold(t, false)
			old := time.Now().UTC().Add(-time.Minute)
			done := make(chan change.Result, 1)
			go func() { done <- f.replicate(t, change.Request{User: "u1", Host: "mail-a", Time: old}) }()
			<-started
			for range 3 {
				if res := f.replicate(t, tc.req(old)); res.Outcome != change.Coalesced {
					t.Fatalf("change during the dsync: %+v, want coalesced", res)
				}
			}
			free()
			res := <-done
			if n := len(f.tracks.CallsOf("u1")); n != 1 {
				t.Fatalf("%d dsyncs, want 1: the changes happened before it started", n)
			}
			if res.Outcome != change.Synced || res.Coalesced != 4 {
				t.Errorf("result %+v: want synced, coalesced 4 (the event and the 3 changes it covered)", res)
			}
			if st, _ := f.st.Status(context.Background(), "u1"); !st.PendingSince.IsZero() || st.InProgress {
				t.Errorf("status %+v: want nothing pending", st)
			}
		})
	}
}
