package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
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
	broker := fs.String("broker-url", env.getenv("K_SINK"), "the Broker ingress to post to (default: $K_SINK)")
	reason := fs.String("reason", "cli", "why, for the sync function's logs (the event's data \"reason\")")
	source := fs.String("source", "dovewarden/cli", "CloudEvent source of the request")
	timeout := fs.Duration("timeout", 10*time.Second, "time to hand the event to the Broker, retries included")
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *broker == "" {
		return errors.New("broker-url: not set, and K_SINK is empty: where is the Broker?")
	}
	if *timeout <= 0 {
		return fmt.Errorf("timeout %s: must be positive", *timeout)
	}
	if *source == "" {
		return errors.New("source: must not be empty")
	}
	snd, err := sink.New(sink.Options{URL: *broker, Overrides: env.getenv("K_CE_OVERRIDES"), Budget: *timeout,
		Retries: 3, Backoff: 100 * time.Millisecond, MaxConns: 1})
	if err != nil {
		return fmt.Errorf("broker-url: %s", redactIn(err.Error(), *broker))
	}
	ev, err := contract.SweepRequest(*reason, *source)
	if err != nil {
		return fmt.Errorf("reason: %w", err)
	}
	if err := snd.Send(ctx, ev); err != nil {
		return fmt.Errorf("send sweep.requested: %s", redactIn(err.Error(), *broker))
	}
	fmt.Fprintf(env.stdout, "sweep.requested %s sent to %s\n", ev.ID(), redacted(*broker))
	return nil
}

// redacted is a URL without its password.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// redactIn replaces the raw URL in msg by its redacted form: the sink's
// errors name their target.
func redactIn(msg, raw string) string { return strings.ReplaceAll(msg, raw, redacted(raw)) }
