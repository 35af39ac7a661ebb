package doveadm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Exec runs dsync as a local `doveadm [-c CONF] sync -u USER -N -s STATE
// [-l SECS] [-T SECS] [-f] DEST` process, for installs where the sync function runs next to Dovecot.
// The arguments are an argv list: no shell ever sees the username.
type Exec struct {
	bin     string
	timeout time.Duration
}

// NewExec makes the transport for the doveadm binary bin; every call is
// bounded by timeout.
func NewExec(bin string, timeout time.Duration) *Exec {
	return &Exec{bin: bin, timeout: timeout}
}

// Args returns the argv (without the binary) for req on ep. -N syncs all
// namespaces, as doveadm-http's allNamespaces and Dovecot 2.3's replicator
// do: without it dsync skips the shared and public namespaces, so another
// user's shared mailbox or a public one that USER changed would not be
// copied. -s is always passed, empty for a first sync, because doveadm
// prints the new state only when it is given. -l is req.LockTimeout and
// -T req.StallTimeout, in whole seconds, rounded up, when set; each of
// req.ExcludeMailboxes is an -x.
func Args(ep Endpoint, req SyncRequest) []string {
	var args []string
	if ep.Config != "" {
		args = append(args, "-c", ep.Config)
	}
	args = append(args, "sync", "-u", req.User, "-N", "-s", req.State)
	if req.LockTimeout > 0 {
		// Rounded up: a timeout under half a second must still ask for
		// the lock. dsync's own per-user lock, as doveadm-http's
		// lockTimeout: without -l dsync takes none, and nothing stands
		// behind the Redis lock when that is lost (a Redis failover).
		args = append(args, "-l", strconv.Itoa(wholeSeconds(req.LockTimeout)))
	}
	if req.StallTimeout > 0 {
		args = append(args, "-T", strconv.Itoa(wholeSeconds(req.StallTimeout)))
	}
	if req.Full {
		args = append(args, "-f")
	}
	for _, m := range req.ExcludeMailboxes {
		args = append(args, "-x", m)
	}
	return append(args, req.Destination)
}

// Sync runs one dsync of req.User to req.Destination. A state too large
// for an argument (E2BIG: over 128 KiB with 4 KiB pages) is left out, and
// the dsync runs at once as a full one without it (withoutState).
func (x *Exec) Sync(ctx context.Context, ep Endpoint, req SyncRequest) (SyncResult, error) {
	res, err := x.sync(ctx, ep, req)
	if req.State != "" && errors.Is(err, syscall.E2BIG) {
		return withoutState(ctx, ep, req, x.sync)
	}
	return res, err
}

func (x *Exec) sync(ctx context.Context, ep Endpoint, req SyncRequest) (SyncResult, error) {
	opn := op(req.User, ep.Where())
	// Refuse here too: this is the last point before an argv.
	if err := ValidateUser(req.User); err != nil {
		return SyncResult{}, &Error{Kind: KindProtocol, Op: opn, Detail: err.Error()}
	}
	if x.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.timeout)
		defer cancel()
	}
	// A wrapper the kill does not reach (sudo's use_pty) leaves its
	// doveadm running: let a stalled one end itself.
	req.StallTimeout = stallTimeout(ctx, 0)
	cmd := command(ctx, x.bin, Args(ep, req)...)
	// The state and a line end; a longer one is not kept (maxStateKept).
	stdout := &headBuffer{max: maxStateKept + 2}
	stderr := &tailBuffer{max: 2048}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := run(cmd)
	if err == nil {
		if stdout.n > stdout.max {
			return SyncResult{StateDropped: stdout.n}, nil
		}
		return SyncResult{State: strings.TrimSpace(string(stdout.buf))}, nil
	}
	// Told from what doveadm wrote, before a password in it is masked:
	// a short one can be a word of the message (see Redact).
	said := strings.TrimSpace(stderr.String())
	detail := Redact(said, ep.Secrets()...)
	if ctx.Err() != nil {
		return SyncResult{}, &Error{Kind: KindTransport, Op: opn, Detail: fmt.Sprintf("killed: %v", context.Cause(ctx)), Err: err}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		if configUnreadable(said) {
			return SyncResult{}, &Error{Kind: KindConfig, ExitCode: ee.ExitCode(), Op: opn, Detail: detail, Err: err}
		}
		return SyncResult{}, &Error{Kind: KindExitCode, ExitCode: ee.ExitCode(), Op: opn, Detail: detail, Err: err}
	}
	return SyncResult{}, &Error{Kind: KindTransport, Op: opn, Detail: fmt.Sprintf("%v %s", err, detail), Err: err}
}

// command builds a doveadm process bound to ctx. It runs in a process
// group of its own, and ctx's end kills the whole group: --doveadm-bin
// may be a wrapper (a script, sudo) that runs doveadm as its child rather
// than in its place, and killing the wrapper alone left that doveadm
// running its dsync, without the per-user lock and next to the retry,
// while the call waited WaitDelay past the timeout for the pipes it held
// (measured with Dovecot 2.3 and 2.4 behind a shell script: 7 s for a
// timeout of 2 s, and the doveadm still running).
func command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = childEnv()
	killGroup(cmd)
	// A process outside the group (sudo's use_pty puts the command in
	// a session of its own) may still hold the pipes: stop waiting then.
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// childEnv is the environment of a doveadm process: this process's,
// without dovewarden's own settings. DOVEWARDEN_* variables hold secrets
// (a Redis URL with its password, ingest's credentials) that doveadm has
// no use for, and that whatever it starts in turn (doveconf, the ssh of
// dsync_remote_cmd) would inherit. The sink settings Knative gives
// (K_SINK, K_CE_OVERRIDES, K_CA_CERTS) are dovewarden's too: a wrapper
// script or a program of the user's that sends CloudEvents would
// otherwise send them to the Broker as this function.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "DOVEWARDEN_") || sinkSettings[name] {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// sinkSettings are the variables of Knative's SinkBinding that dovewarden
// reads (docs/configuration.md).
var sinkSettings = map[string]bool{"K_SINK": true, "K_CE_OVERRIDES": true, "K_CA_CERTS": true}

// tailBuffer keeps the last max bytes written: doveadm's last lines say
// why it failed.
type tailBuffer struct {
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

// headBuffer keeps the first max bytes written and counts them all.
type headBuffer struct {
	buf []byte
	max int
	n   int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.n += len(p)
	if room := h.max - len(h.buf); room > 0 {
		h.buf = append(h.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}
