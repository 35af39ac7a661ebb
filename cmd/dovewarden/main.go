// Command dovewarden runs the roles of dovewarden-knative: the ingest
// function that turns Dovecot events into CloudEvents, and the tools around
// it. Each role is a subcommand; see "dovewarden help".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// command is one subcommand: it parses its own args and runs until ctx ends.
type command struct {
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
}

// environment is everything a subcommand may touch of the outside world, so
// tests drive the real program with their own streams and variables.
type environment struct {
	getenv func(string) string
	// environ lists the environment ("NAME=value"), for the warning about
	// DOVEWARDEN_* variables that are no setting; nil: no warning.
	environ func() []string
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
	// ready, when set, is told the address a serving command listens on
	// (tests use it instead of polling a fixed port).
	ready func(net.Addr)
}

var commands = map[string]command{
	"ingest":    {"receive Dovecot events and send CloudEvents to the Broker", runIngest},
	"sync":      {"receive change events and run dsync, one user at a time", runSync},
	"local":     {"run everything in one process: ingest, embedded broker, sync, embedded Redis", runLocal},
	"explain":   {"show the CloudEvent ingest would send for Dovecot event JSON", runExplain},
	"status":    {"show the replication status, overall or of users (like doveadm replicator status)", runStatus},
	"sweep":     {"ask the sync function for a sweep now (posts sweep.requested to the Broker)", runSweep},
	"replicate": {"ask the sync function to replicate users now (posts replication.requested to the Broker)", runReplicate},
	"loadgen":   {"post realistic Dovecot events to an ingest URL and report rate and latency", runLoadgen},
	"broker":    {"run the embedded broker as its own process (a local stand-in for a Knative Broker)", runBroker},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal starts a graceful stop, which can wait up to
	// --shutdown-timeout for dsyncs in flight. A second one ends the
	// process at once, by the signal's default action. What it held is
	// left as a crash leaves it, for the sweep at the next start; but the
	// dsyncs it runs through doveadm-exec are killed first, which would
	// otherwise run on, beside the next start's dsyncs of the same users.
	go func() {
		<-ctx.Done()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		stop()
		sig := <-again
		doveadm.KillRunning()
		signal.Reset(sig)
		if p, err := os.FindProcess(os.Getpid()); err == nil && p.Signal(sig) == nil {
			time.Sleep(time.Second) // its delivery ends the process
		}
		os.Exit(1)
	}()
	env := &environment{getenv: os.Getenv, environ: os.Environ, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	if err := run(ctx, env, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if stoppedDuringStart(ctx, os.Args[1:], err) {
			// A stop asked for (systemctl stop) is a clean one, even
			// before the start was done; the error shows where it was.
			fmt.Fprintln(os.Stderr, "dovewarden: stopped before the start was done:", err)
			return
		}
		fmt.Fprintln(os.Stderr, "dovewarden:", err)
		os.Exit(exitCode(err))
	}
}

// stoppedDuringStart tells whether err is a serving role's start cut short
// by the stop signal (ctx ended), not a failure of its own.
func stoppedDuringStart(ctx context.Context, args []string, err error) bool {
	serving := map[string]bool{"local": true, "ingest": true, "sync": true, "broker": true}
	return len(args) > 0 && serving[args[0]] && ctx.Err() != nil && errors.Is(err, context.Canceled)
}

// exitError carries a specific process exit code (explain uses 1 for input
// it could not parse).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 2
}

func run(ctx context.Context, env *environment, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(env.stdout)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	cmd, ok := commands[args[0]]
	if !ok {
		usage(env.stderr)
		return fmt.Errorf("unknown command %q", args[0])
	}
	return cmd.run(ctx, env, args[1:])
}

// newFlagSet makes a command's flag set; tests wrap it to see the flags.
var newFlagSet = func(name string, env *environment) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	return fs
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: dovewarden COMMAND [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-9s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w, "\nEvery flag can also be set as DOVEWARDEN_<FLAG> (upper case, '-' as '_').\nRun 'dovewarden COMMAND -h' for a command's flags.")
}
