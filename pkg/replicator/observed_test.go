package replicator

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// TestReplicate_ObservedChangesCoalesceExactly: a change stamped with the
// Redis clock when ingest saw it is covered by any dsync that started
// after that, with no clock-skew margin; the same change known only by its
// Dovecot time still needs the margin, and so runs a dsync of its own.
func TestReplicate_ObservedChangesCoalesceExactly(t *testing.T) {
	o := fast
	o.ClockSkew = time.Hour // a margin no stamped change may need
	f := newFixture(t, o)

	seen := time.Now().UTC()
	first := f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen})
	if first.Outcome != change.Synced {
		t.Fatalf("first change: %s, want synced", first.Outcome)
	}

	// Seen before that dsync started: covered, exactly.
	again := f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen})
	if again.Outcome != change.Covered {
		t.Errorf("stamped change seen before the last dsync started: %s, want covered", again.Outcome)
	}
	// The same change without the stamp: Dovecot's clock cannot be
	// trusted within the margin, so it syncs again.
	unstamped := f.replicate(t, change.Request{User: "u1", Time: seen})
	if unstamped.Outcome != change.Synced {
		t.Errorf("unstamped change: %s, want synced", unstamped.Outcome)
	}
	// Seen after the last dsync started: not covered.
	later := time.Now().Add(50 * time.Millisecond).UTC()
	f.mr.SetTime(later.Add(time.Second))
	after := f.replicate(t, change.Request{User: "u1", Time: later, Observed: later})
	if after.Outcome != change.Synced {
		t.Errorf("stamped change seen after the last dsync started: %s, want synced", after.Outcome)
	}
	if n := len(f.tracks.CallsOf("u1")); n != 3 {
		t.Errorf("%d dsyncs, want 3", n)
	}
}

// TestReplicate_CoveredFromMemory: once this instance saw a dsync of u1
// succeed, a stamped change seen before that dsync started is acknowledged
// without asking Redis (Redis is gone here); one seen after it still needs
// Redis, and so fails as unavailable rather than being acknowledged.
func TestReplicate_CoveredFromMemory(t *testing.T) {
	f := newFixture(t, fast)
	seen := time.Now().UTC().Add(-time.Second)
	if res := f.replicate(t, change.Request{User: "u1", Time: seen, Observed: seen}); res.Outcome != change.Synced {
		t.Fatalf("first change: %s", res.Outcome)
	}
	f.mr.Close()

	res, err := f.r.Replicate(context.Background(), change.Request{User: "u1", Time: seen, Observed: seen, Priority: change.Low})
	if err != nil || res.Outcome != change.Covered {
		t.Errorf("covered change with Redis down: %+v, %v; want covered", res, err)
	}
	later := time.Now().UTC().Add(time.Minute)
	if _, err := f.r.Replicate(context.Background(), change.Request{User: "u1", Time: later, Observed: later, Priority: change.Low}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a newer change with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := f.r.Replicate(context.Background(), change.Request{User: "u2", Time: seen, Observed: seen, Priority: change.Low}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("another user's change with Redis down: %v, want ErrUnavailable", err)
	}
}
