package main

import (
	"context"
	"fmt"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
)

// runSweep asks for a sweep now, as the hourly PingSource does: it posts
// one sweep.requested event to the Broker, which routes it to the sync
// function (the sweep Trigger). A sweep already running covers it.
func runSweep(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("sweep", env)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: dovewarden sweep [flags]\n\nPosts one sweep.requested CloudEvent to the Broker and exits. The sync\nfunction then lists every user and requests the pending, failed and\nstale ones, a batch at a time (docs/sync.md, \"Sweep\").\n\nflags:")
		fs.PrintDefaults()
	}
	broker := addBrokerTarget(fs, env)
	reason := fs.String("reason", "cli", "why, for the sync function's logs (the event's data \"reason\")")
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	snd, err := broker.sender(env)
	if err != nil {
		return err
	}
	ev, err := contract.SweepRequest(*reason, *broker.source)
	if err != nil {
		return fmt.Errorf("reason: %w", err)
	}
	if err := snd.Send(ctx, ev); err != nil {
		return fmt.Errorf("send sweep.requested: %s", broker.sendError(err))
	}
	fmt.Fprintf(env.stdout, "sweep.requested %s sent to %s\n", ev.ID(), broker.shown())
	return nil
}
