package main

import (
	"context"
	"errors"
	"fmt"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

// runReplicate asks for a replication of each named user now, like
// `doveadm replicator replicate [-f]`: one replication.requested event per
// user to the Broker, whose Triggers route it to the sync function's lane
// for its priority.
func runReplicate(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("replicate", env)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: dovewarden replicate [flags] USER...\n\nPosts one replication.requested CloudEvent per user to the Broker and exits.\nThe sync function replicates each user as soon as its lane gets to it\n(docs/events.md).\n\nflags:")
		fs.PrintDefaults()
	}
	broker := addBrokerTarget(fs, env)
	full := fs.Bool("full", false, "a full sync (doveadm sync -f) instead of an incremental one")
	host := fs.String("host", "", "the Dovecot host to sync from (a name of the sync function's host map); empty: its default host")
	priority := fs.String("priority", string(change.High), "the lane: high or low")
	reason := fs.String("reason", "admin", "why, for the sync function's logs (the event's data \"reason\")")
	format := fs.String("username-format", dovecot.DefaultUsernameFormat, "normalise usernames like Dovecot's auth_username_format, as ingest does")
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("no user: name one or more")
	}
	prio := change.Priority(*priority)
	if !prio.Valid() {
		return fmt.Errorf("priority %q: want high or low", *priority)
	}
	if err := doveadm.ValidateHost(*host); err != nil {
		return fmt.Errorf("host: %w", err)
	}
	uf, err := dovecot.ParseUsernameFormat(*format)
	if err != nil {
		return fmt.Errorf("username-format: %w", err)
	}
	// Build every request first and read it back as the sync function
	// will, so that nothing is sent when one of them would be refused.
	type request struct {
		user string
		ev   cloudevents.Event
	}
	// Users are named as ingest names them (the sync function's locks,
	// marks, status and excluded set key on that name); a user named
	// twice is asked for once.
	requests := make([]request, 0, fs.NArg())
	seen := make(map[string]bool, fs.NArg())
	for _, arg := range fs.Args() {
		user := uf.Apply(arg)
		err := doveadm.ValidateUser(user)
		if err != nil {
			return fmt.Errorf("user %q: %w", arg, err)
		}
		if seen[user] {
			continue
		}
		seen[user] = true
		ev, err := contract.Requested(change.Request{User: user, Host: *host, Full: *full, Priority: prio}, *reason, *broker.source)
		if err == nil {
			_, err = contract.ToRequest(ev)
		}
		if err != nil {
			return fmt.Errorf("user %q: %w", arg, err)
		}
		requests = append(requests, request{user, ev})
	}
	snd, err := broker.sender(env)
	if err != nil {
		return err
	}
	var failed []error
	for _, e := range requests {
		if err := snd.Send(ctx, e.ev); err != nil {
			failed = append(failed, fmt.Errorf("user %q: send replication.requested: %s", e.user, broker.sendError(err)))
			continue
		}
		if _, err := fmt.Fprintf(env.stdout, "replication.requested %s for %s sent to %s\n", e.ev.ID(), e.user, broker.shown()); err != nil {
			failed = append(failed, fmt.Errorf("user %q: replication.requested %s sent; standard output: %w", e.user, e.ev.ID(), err))
		}
	}
	return errors.Join(failed...)
}
