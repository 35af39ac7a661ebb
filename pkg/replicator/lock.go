package replicator

import (
	"context"
	"sync"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// lease is this instance's hold on a user's lock while its dsync runs.
// Redis sets the lock's expiry when a call that takes or renews it
// arrives, so the lock is held for at least the TTL after that call was
// sent, whenever its answer comes. The lease counts from there, less a
// sixth of the TTL, and ends at that moment on this process's own clock:
// a renewal stuck on a Redis that does not answer must not keep a dsync
// running past the lock, or another instance could take the lock and run a
// second dsync of the user.
type lease struct {
	ctx context.Context // ends (doveadm.ErrLockLost) with the lease
	mu  sync.Mutex
	end time.Time // the lock is surely held before this
}

// held reports whether the lock is surely still this instance's.
func (l *lease) held() bool {
	l.mu.Lock()
	end := l.end
	l.mu.Unlock()
	return l.ctx.Err() == nil && time.Now().Before(end)
}

// keepLock holds the user's lock, taken by a call sent at taken, until
// stop is called: it renews it every TTL/3 and ends the lease's context
// with doveadm.ErrLockLost when the lock is gone (another owner, or
// expired) or was not renewed in time.
func (r *Replicator) keepLock(ctx context.Context, user, token string, taken time.Time) (*lease, func()) {
	lctx, cancel := context.WithCancelCause(ctx)
	ttl := r.opts.LockTTL
	hold := ttl - ttl/6
	l := &lease{ctx: lctx, end: taken.Add(hold)}
	expire := time.AfterFunc(time.Until(l.end), func() {
		if lctx.Err() == nil {
			r.log.Error("lock not renewed before it expires; dsync stopped", "user", user)
		}
		cancel(doveadm.ErrLockLost)
	})
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-lctx.Done():
				return
			case <-t.C:
			}
			sent := time.Now()
			l.mu.Lock()
			end := l.end
			l.mu.Unlock()
			// An answer after the lease ended is of no use.
			rctx, rcancel := context.WithDeadline(lctx, end)
			ok, err := r.store.Renew(rctx, user, token, ttl)
			rcancel()
			switch {
			case err == nil && ok:
				l.mu.Lock()
				l.end = sent.Add(hold)
				l.mu.Unlock()
				expire.Reset(time.Until(sent.Add(hold)))
			case err == nil && !ok:
				r.log.Error("lock lost while dsync runs", "user", user)
				cancel(doveadm.ErrLockLost)
				return
			default:
				r.log.Warn("lock renewal failed, will retry", "user", user, "err", err)
			}
		}
	}()
	return l, func() {
		// Cancel first: a renewal stuck on a slow Redis must not hold up
		// the answer.
		expire.Stop()
		cancel(nil)
		close(done)
		<-stopped
	}
}
