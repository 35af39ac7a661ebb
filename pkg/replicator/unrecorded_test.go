package replicator

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// succeedFails is a Store whose nth Succeed fails without reaching
// Redis: a connection that broke as the outcome was to be recorded.
type succeedFails struct {
	*state.Store
	n     int32
	calls atomic.Int32
}

func (s *succeedFails) Succeed(ctx context.Context, a state.SuccessArgs) (time.Time, state.Claim, error) {
	if s.calls.Add(1) == s.n {
		return time.Time{}, state.Claim{}, errors.New("connection reset by peer")
	}
	return s.Store.Succeed(ctx, a)
}

// withStore replaces f's replicator with one on st, reaching mail-a.
func (f *fixture) withStore(o Options, st Store) {
	def := doveadm.Endpoint{Name: "mail-a", URL: f.a.APIURL(), User: "doveadm", Password: doveadmtest.Password, Destination: "tcp:mail-b:12345"}
	f.r = New(o, st, doveadm.NewHTTP(nil, 5*time.Second), doveadm.NewHostMap(def, def),
		f.notes, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&safebuf.Buffer{}, nil)))
}

// A dsync that ran but whose success could not be recorded is answered
// so that the Broker delivers the change again; the lock is released
// (Redis answered again by then), so that the redelivery runs a dsync.
// Before, the lock was left to expire by its TTL: a redelivery within it
// found the user busy and was answered "merged" into an attempt nobody
// ran, and the change waited for the retry sweep.
func TestReplicate_AnUnrecordedSuccessReleasesTheLock(t *testing.T) {
	o := fast
	o.LockTTL = time.Minute
	f := newFixture(t, o)
	f.withStore(o, &succeedFails{Store: f.st, n: 1})
	req := change.Request{User: "u1", Host: "mail-a", Priority: change.High, Time: time.Now()}
	if _, err := f.r.Replicate(context.Background(), req); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Replicate with its success unrecorded: %v; want ErrUnavailable, so that the change is delivered again", err)
	}
	if f.mr.Exists(state.LockKey("u1")) {
		t.Errorf("the lock is still held (TTL %v) by an attempt that is over", f.mr.TTL(state.LockKey("u1")))
	}
	res, err := f.r.Replicate(context.Background(), req)
	if err != nil || res.Outcome != change.Synced {
		t.Fatalf("the Broker's redelivery: %+v, %v; want a dsync", res, err)
	}
	if n := len(f.tracks.CallsOf("u1")); n != 2 {
		t.Errorf("%d dsyncs of u1; want 2", n)
	}
}

// The same for the rerun of a request whose first round succeeded: that
// round covered the request's change, so its success is the answer (a
// redelivery would find the change covered and run nothing), the rerun's
// changes stay pending, and the user is asked for again through the
// Broker, as for a rerun cut off.
func TestReplicate_AnUnrecordedRerunKeepsTheFirstRoundsSuccess(t *testing.T) {
	o := fast
	o.LockTTL = time.Minute
	f := newFixture(t, o)
	f.withStore(o, &succeedFails{Store: f.st, n: 2})
	started, release := f.hold(t, true)
	done := make(chan change.Result, 1)
	go func() { done <- f.replicate(t, change.Request{User: "u1", Host: "mail-a"}) }()
	<-started
	if res := f.replicate(t, change.Request{User: "u1", Host: "mail-b"}); res.Outcome != change.Coalesced {
		t.Fatalf("change during the first dsync: %+v", res)
	}
	release()
	if res := <-done; res.Outcome != change.Synced || res.Start.IsZero() {
		t.Fatalf("result %+v; want the first round's success", res)
	}
	if f.mr.Exists(state.LockKey("u1")) {
		t.Errorf("the lock is still held (TTL %v) by an attempt that is over", f.mr.TTL(state.LockKey("u1")))
	}
	if s, _ := f.st.Status(context.Background(), "u1"); s.PendingSince.IsZero() {
		t.Errorf("status %+v: want the rerun's change pending", s)
	}
	if f.notes.asked == nil {
		t.Error("the user was not asked for again")
	}
}
