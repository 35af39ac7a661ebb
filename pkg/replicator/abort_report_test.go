package replicator

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestReplicate_ACutAttemptPromisesNoMoreAttempts: an attempt cut off
// (lock lost, a stop) is this request's last: its replication.failed
// (retry_by broker) gives its own number as max_attempts, as the last
// attempt of a request does. Before, it gave the policy's bound of the
// cut's class: "attempt 2 of 1" for a lock lost on a retry, "attempt 1
// of 4" for a stop, which promised retries that never come.
func TestReplicate_ACutAttemptPromisesNoMoreAttempts(t *testing.T) {
	t.Run("lock lost on the retry", func(t *testing.T) {
		f := newFixture(t, fast)
		release := make(chan struct{})
		var once sync.Once
		t.Cleanup(func() { once.Do(func() { close(release) }) })
		var calls atomic.Int32
		f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75})
		f.a.OnStart = func(doveadmtest.Call) {
			if calls.Add(1) == 2 {
				// Someone else's lock replaces ours (as after an expiry).
				f.mr.Set(state.LockKey("u1"), "someone-else")
				<-release
			}
		}
		_, err := f.r.Replicate(context.Background(), change.Request{User: "u1", Priority: change.High})
		once.Do(func() { close(release) })
		if !errors.Is(err, ErrAborted) {
			t.Fatalf("err %v, want aborted", err)
		}
		fs := f.notes.all()
		if len(fs) != 2 {
			t.Fatalf("failures reported %+v, want 2", fs)
		}
		cut := fs[1]
		if cut.RetryBy != change.RetryByBroker || cut.Attempt != 2 || cut.MaxAttempts != cut.Attempt {
			t.Errorf("cut attempt reported as attempt %d of %d (retry_by %s), want 2 of 2 (broker)",
				cut.Attempt, cut.MaxAttempts, cut.RetryBy)
		}
	})
	t.Run("stopped mid-dsync", func(t *testing.T) {
		f := newFixture(t, fast)
		f.a.Latency = 5 * time.Second
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f.a.OnStart = func(doveadmtest.Call) { cancel() }
		_, err := f.r.Replicate(ctx, change.Request{User: "u1", Priority: change.High})
		if !errors.Is(err, ErrAborted) {
			t.Fatalf("err %v, want aborted", err)
		}
		fs := f.notes.all()
		if len(fs) != 1 || fs[0].RetryBy != change.RetryByBroker || fs[0].Attempt != 1 || fs[0].MaxAttempts != 1 {
			t.Errorf("failures reported %+v, want attempt 1 of 1, retry_by broker", fs)
		}
	})
}
