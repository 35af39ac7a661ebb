package replicator

import (
	"context"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// keepLock renews the user's lock every TTL/3 until stop is called. If the
// lock is gone (another owner, or expired) or cannot be renewed for a whole
// TTL, it cancels ctx with doveadm.ErrLockLost: no dsync may go on without
// the lock, or two could run at once.
func (r *Replicator) keepLock(ctx context.Context, user, token string) (context.Context, func()) {
	lctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	stopped := make(chan struct{})
	ttl := r.opts.LockTTL
	go func() {
		defer close(stopped)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		lastOK := time.Now()
		for {
			select {
			case <-done:
				return
			case <-lctx.Done():
				return
			case <-t.C:
			}
			rctx, rcancel := context.WithTimeout(lctx, ttl/3)
			ok, err := r.store.Renew(rctx, user, token, ttl)
			rcancel()
			switch {
			case err == nil && ok:
				lastOK = time.Now()
			case err == nil && !ok:
				r.log.Error("lock lost while dsync runs", "user", user)
				cancel(doveadm.ErrLockLost)
				return
			case time.Since(lastOK) >= ttl-ttl/6:
				r.log.Error("lock not renewable before it expires", "user", user, "err", err)
				cancel(doveadm.ErrLockLost)
				return
			default:
				r.log.Warn("lock renewal failed, will retry", "user", user, "err", err)
			}
		}
	}()
	return lctx, func() {
		// Cancel first: a renewal stuck on a slow Redis must not hold up
		// the answer.
		cancel(nil)
		close(done)
		<-stopped
	}
}
