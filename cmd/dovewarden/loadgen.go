package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/loadgen"
)

// runLoadgen posts generated Dovecot events at an ingest URL and prints a
// report. It exits 1 when requests failed (unless -allow-errors), 2 when it
// could not run at all.
func runLoadgen(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("loadgen", env)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: dovewarden loadgen -count N | -duration D [flags]\n\n"+
			"Posts realistic Dovecot event-exporter requests to -url and reports statuses,\n"+
			"rate and latency. With -rate, requests follow a fixed schedule, and one held\n"+
			"up by slow answers is timed from when it was due, so a stalling receiver is\n"+
			"not hidden. Exits 1 when requests failed (unless -allow-errors).\n\nflags:")
		fs.PrintDefaults()
	}
	var (
		url         = fs.String("url", loadgen.DefaultURL, "ingest `URL` to POST events to (must be loopback unless -allow-remote)")
		version     = fs.String("version", string(loadgen.V24), "Dovecot `version` whose event shapes to send: 2.3 or 2.4")
		users       = fs.Int("users", loadgen.DefaultUsers, "number of users (loaduser0001, ...)")
		hosts       = fs.Int("hosts", loadgen.DefaultHosts, "number of Dovecot hosts (mail-1.loadgen.test, ...)")
		mix         = fs.String("mix", "default", "event kinds and weights as NAME=WEIGHT,..., or a named mix: default (what the shipped Dovecot exporter filters send) or unfiltered (those plus read-only and failed commands); NAME is one of "+strings.Join(loadgen.MixNames(), ", ")+"; IMAP commands also take :NO or :BAD")
		rate        = fs.Float64("rate", 0, "target requests per second over all connections (0: as fast as possible; at most 1e9)")
		concurrency = fs.Int("concurrency", 1, "parallel connections, one request in flight each, as Dovecot (1 to 10000)")
		count       = fs.Uint64("count", 0, "stop after this many requests (0: no limit)")
		duration    = fs.Duration("duration", 0, "stop after this long (0: no limit)")
		timeout     = fs.Duration("timeout", loadgen.DefaultTimeout, "per-request timeout (Dovecot's default), counted from when the request was due")
		basicAuth   = fs.String("basic-auth", "", "`user:password` for HTTP Basic authentication")
		token       = fs.String("token", "", "bearer `token` for the Authorization header")
		allowRemote = fs.Bool("allow-remote", false, "allow a URL whose host is not loopback")
		allowErrors = fs.Bool("allow-errors", false, "succeed even when requests failed")
		asJSON      = fs.Bool("json", false, "print the report as JSON")
		seed        = fs.Uint64("seed", 1, "seed of the event sequence (same seed, same events)")
	)
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("loadgen: unexpected arguments %q", fs.Args())
	}
	// The library takes a zero as "the default"; given on the command
	// line it is a mistake.
	var zero []error
	if *users == 0 {
		zero = append(zero, errors.New("users: 0, want at least 1"))
	}
	if *hosts == 0 {
		zero = append(zero, errors.New("hosts: 0, want at least 1"))
	}
	if *concurrency == 0 {
		zero = append(zero, fmt.Errorf("concurrency: 0, want 1 to %d", loadgen.MaxConcurrency))
	}
	if *timeout == 0 {
		zero = append(zero, errors.New("timeout: 0s, want more than 0"))
	}
	if err := errors.Join(zero...); err != nil {
		return fmt.Errorf("loadgen: %w", err)
	}
	v, err := loadgen.ParseVersion(*version)
	if err != nil {
		return fmt.Errorf("loadgen: version: %w", err)
	}
	m, err := loadgen.ParseMix(*mix)
	if err != nil {
		return fmt.Errorf("loadgen: mix: %w", err)
	}
	rep, err := loadgen.Run(ctx, loadgen.Config{
		URL: *url, Version: v, Users: *users, Hosts: *hosts, Mix: m,
		Rate: *rate, Concurrency: *concurrency, Count: *count, Duration: *duration, Timeout: *timeout,
		BasicAuth: *basicAuth, Token: *token, AllowRemote: *allowRemote, AllowErrors: *allowErrors, Seed: *seed,
	})
	if err != nil && !errors.Is(err, loadgen.ErrRequestsFailed) {
		return fmt.Errorf("loadgen: %w", err)
	}
	if werr := writeLoadgenReport(env, rep, *asJSON); werr != nil {
		return werr
	}
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("loadgen: %w", err)}
	}
	return nil
}

func writeLoadgenReport(env *environment, rep loadgen.Report, asJSON bool) error {
	if !asJSON {
		return rep.WriteText(env.stdout)
	}
	enc := json.NewEncoder(env.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
