package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/explain"
	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
)

func runExplain(_ context.Context, env *environment, args []string) error {
	fs := newFlagSet("explain", env)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: dovewarden explain [flags] [FILE|-]\n\nReads Dovecot event JSON (one object, or one per line) and prints, per event,\nthe CloudEvent ingest would send, or 'dropped: <reason>'.\n\nflags:")
		fs.PrintDefaults()
	}
	format := fs.String("username-format", dovecot.DefaultUsernameFormat, "normalise usernames like Dovecot's auth_username_format, as ingest does")
	host := fs.String("host", "", "the host query parameter of Dovecot's exporter URL (?host=NAME), if it has one: ingest names it instead of the events' hostname")
	maxBody := fs.Int64("max-body", ingest.DefaultMaxBody, "ingest's --max-body: an event over it is invalid (ingest answers 413)")
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	uf, err := dovecot.ParseUsernameFormat(*format)
	if err != nil {
		return fmt.Errorf("username-format: %w", err)
	}
	if *maxBody < 1 {
		return fmt.Errorf("max-body %d: want a positive number of bytes", *maxBody)
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("explain takes one file, got %d arguments", fs.NArg())
	}
	var in io.Reader = env.stdin
	if name := fs.Arg(0); name != "" && name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	s, err := explain.RunWith(in, env.stdout, explain.Options{Translator: ingest.Translator{Username: uf}, Host: *host, MaxBody: *maxBody})
	fmt.Fprintf(env.stderr, "%d events: %d changes, %d dropped, %d invalid\n", s.Events, s.Changes, s.Dropped, s.Invalid)
	var re *explain.ReadError
	var we *explain.WriteError
	if errors.As(err, &re) || errors.As(err, &we) {
		return err // like a file that does not open: exit code 2
	}
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	if s.Invalid > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d invalid events", s.Invalid)}
	}
	return nil
}
