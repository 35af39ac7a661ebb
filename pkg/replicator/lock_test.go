package replicator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// unanswered is a Store whose first renewal goes through, as Redis applies
// it: the lock then expires TTL after the call. Every later renewal hangs
// for latency (a Redis cut off, up to the client's read timeout) and
// fails.
type unanswered struct {
	Store
	latency time.Duration
	mu      sync.Mutex
	calls   int
	expiry  time.Time
}

func (s *unanswered) Renew(ctx context.Context, user, token string, ttl time.Duration) (bool, error) {
	s.mu.Lock()
	s.calls++
	if s.calls == 1 {
		s.expiry = time.Now().Add(ttl)
		s.mu.Unlock()
		return true, nil
	}
	s.mu.Unlock()
	select {
	case <-time.After(s.latency):
	case <-ctx.Done():
	}
	return false, errors.New("i/o timeout")
}

// TestKeepLock_EndsBeforeTheLockExpires: when renewals stop getting
// through, the dsync is cut off before the lock can expire in Redis, not
// when a failing renewal happens to answer: after the expiry another
// instance may take the lock and run a second dsync of the user.
func TestKeepLock_EndsBeforeTheLockExpires(t *testing.T) {
	const ttl = 600 * time.Millisecond
	for _, latency := range []time.Duration{ttl / 10, ttl} {
		st := &unanswered{latency: latency}
		r := New(Options{LockTTL: ttl}, st, nil, doveadm.HostMap{}, nil, prometheus.NewRegistry(),
			slog.New(slog.NewTextHandler(io.Discard, nil)))
		l, stop := r.keepLock(context.Background(), "u1", "token", time.Now())
		select {
		case <-l.ctx.Done():
		case <-time.After(5 * ttl):
			t.Fatalf("latency %v: the dsync was never cut off", latency)
		}
		ended := time.Now()
		stop()
		st.mu.Lock()
		expiry, calls := st.expiry, st.calls
		st.mu.Unlock()
		if calls < 2 {
			t.Fatalf("latency %v: %d renewals; the test needs a failing one", latency, calls)
		}
		if !ended.Before(expiry) {
			t.Errorf("latency %v: the dsync went on %v after the lock expired", latency, ended.Sub(expiry))
		}
		if !errors.Is(context.Cause(l.ctx), doveadm.ErrLockLost) {
			t.Errorf("latency %v: cause %v, want ErrLockLost", latency, context.Cause(l.ctx))
		}
		if l.held() {
			t.Errorf("latency %v: the lease still says held", latency)
		}
	}
}

// TestKeepLock_HoldsWhileRenewed: renewals that go through keep the lease
// past the TTL of the call that took the lock, and stop ends it without
// calling it lost.
func TestKeepLock_HoldsWhileRenewed(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	st := &renewing{}
	r := New(Options{LockTTL: ttl}, st, nil, doveadm.HostMap{}, nil, prometheus.NewRegistry(),
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	taken := time.Now()
	l, stop := r.keepLock(context.Background(), "u1", "token", taken)
	for st.n() < 4 && l.ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if time.Since(taken) < ttl {
		t.Fatalf("4 renewals within %v of a %v TTL", time.Since(taken), ttl)
	}
	if !l.held() {
		t.Fatalf("lease ended after %d renewals: %v", st.n(), context.Cause(l.ctx))
	}
	stop()
	if l.held() || errors.Is(context.Cause(l.ctx), doveadm.ErrLockLost) {
		t.Errorf("after stop: held %v, cause %v", l.held(), context.Cause(l.ctx))
	}
}

type renewing struct {
	Store
	mu    sync.Mutex
	calls int
}

func (s *renewing) Renew(context.Context, string, string, time.Duration) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return true, nil
}

func (s *renewing) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}
