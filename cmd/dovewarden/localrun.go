package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// localRun is this process's record in a Redis that outlives it: the
// embedded broker holds accepted changes in memory only, so a run that
// ends without delivering them or marking their users pending (a crash,
// SIGKILL, power loss) must be noticed by the next start, which then has
// the sweep replicate every user (state.RecoveryKey).
type localRun struct {
	instance, id string
	// unclean: the previous run of this instance did not stop cleanly.
	unclean bool
}

// Budgets of the Redis calls that record a run. The end's comes after
// the listener's and the broker's --shutdown-timeout and the marks'
// budget: together 27 s by default, within the systemd unit's
// TimeoutStopSec.
const (
	runBeginBudget = 5 * time.Second
	runEndBudget   = 2 * time.Second
)

// beginRun records this run under the instance name (host name and listen
// address, the same across restarts of one installation) and reports a
// previous run that did not stop cleanly. Without the record a crash of
// this run would go unnoticed: local mode does not start without it, as it
// does not start without its Redis scripts (a supervisor starts it again).
func beginRun(ctx context.Context, st *state.Store, addr net.Addr, fullSyncInterval time.Duration, log *slog.Logger) (*localRun, error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	r := &localRun{
		instance: host + " " + addr.String(),
		id:       fmt.Sprintf("pid %d, started %s", os.Getpid(), time.Now().UTC().Format(time.RFC3339Nano)),
	}
	ctx, cancel := context.WithTimeout(ctx, runBeginBudget)
	defer cancel()
	// After the full-sync interval every user it would request is due
	// for a full sync anyway.
	unclean, err := st.RunBegin(ctx, r.instance, r.id, fullSyncInterval)
	if err != nil {
		return nil, err
	}
	if unclean != nil {
		r.unclean = true
		log.Warn("the previous run did not stop cleanly: changes it had accepted and not yet replicated may be lost; the sweep replicates every user whose last dsync started before now",
			"previous", unclean.Run, "instance", r.instance, "recovery", unclean.Recovery)
	}
	return r, nil
}

// end records a clean stop: every change this run accepted was replicated
// or is marked pending.
func (r *localRun) end(st *state.Store, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), runEndBudget)
	defer cancel()
	if err := st.RunEnd(ctx, r.instance, r.id); err != nil {
		log.Warn("could not record the clean stop in Redis: the next start replicates every user", "err", err)
	}
}

// recoverySweep asks for one more sweep once the locks of a run that
// died mid-dsync have expired: the sweep at start skips users whose lock
// is held.
func recoverySweep(ctx context.Context, b *broker.Broker, lockTTL time.Duration, log *slog.Logger) {
	select {
	case <-ctx.Done():
	case <-time.After(lockTTL + time.Second):
		requestSweep(ctx, b, "recovery", log)
	}
}
