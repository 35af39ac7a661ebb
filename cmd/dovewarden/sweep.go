package main

import (
	"context"
	"fmt"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
)

// runSweep asks for a sweep now, as the hourly PingSource does: it posts
// one sweep.requested event to the Broker, which routes it to the sync
// function (the sweep Trigger). A sweep already running covers it.
func runSweep(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("sweep", env)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: dovewarden sweep [flags]\n\nPosts one sweep.requested CloudEvent to the Broker and exits. The sync\nfunction then lists every user and requests the pending, failed and\nstale ones (with -all, every one not replicated since), a batch at a\ntime (docs/sync.md, \"Sweep\").\n\nflags:")
		fs.PrintDefaults()
	}
	broker := addBrokerTarget(fs, env)
	reason := fs.String("reason", "cli", "why, for the sync function's logs (the event's data \"reason\")")
	all := fs.Bool("all", false, "request every user whose last successful dsync started before now, not only the pending, failed and stale ones: after changes were lost without a mark (Redis or sync down for longer than the Broker retries, events dead-lettered)")
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *all && *reason == sweep.SweepReasonRetry {
		// A retry sweep lists no host: it takes the failed and pending
		// users alone, and every other user would wait for the next
		// sweep that lists them, while this one said it was done.
		return fmt.Errorf("all with reason %q: a retry sweep lists no host, so it cannot request every user; give another reason", *reason)
	}
	snd, err := broker.sender(env)
	if err != nil {
		return err
	}
	ev, err := contract.SweepRequest(*reason, *broker.source, *all)
	if err != nil {
		return fmt.Errorf("reason: %w", err)
	}
	if err := snd.Send(ctx, ev); err != nil {
		return fmt.Errorf("send sweep.requested: %s", broker.sendError(err))
	}
	if _, err := fmt.Fprintf(env.stdout, "sweep.requested %s sent to %s\n", ev.ID(), broker.shown()); err != nil {
		return fmt.Errorf("sweep.requested %s sent; standard output: %w", ev.ID(), err)
	}
	return nil
}
