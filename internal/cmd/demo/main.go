// Command demo is the README's main command (`make demo`): it runs the
// whole system on one machine against two real Dovecot instances and shows
// changes replicating. It installs Dovecot 2.3 from Debian 12 when missing
// (as root; otherwise it says what to install; where Debian ships another
// version it says to use -dovecot 2.4), starts two instances, an
// active-active pair, with generated configs on loopback ports and the
// project's own exporter snippet, starts `dovewarden local` wired to
// them, delivers mail
// and makes IMAP changes, shows them arriving on the other side, prints
// the metrics and status URLs, and runs until Ctrl-C, then stops every
// process it started. Should dovewarden or a Dovecot instance exit before,
// it says so with its log and exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

func main() {
	// SIGHUP too: a closed terminal or a dropped SSH session ends the demo
	// as Ctrl-C does, stopping what it started. (Else the demo would die
	// of it and leave the Dovecot instances' folders, and dovewarden local,
	// in a process group of its own, would be left to its Pdeathsig.)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	switch {
	case errors.Is(err, errInterrupted):
		// Ctrl-C before the demonstration finished: what the shell
		// reports for a program that SIGINT ended.
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// errInterrupted ends a run that Ctrl-C (or SIGTERM, SIGHUP) stopped before the
// demonstration finished: not a failure to report with logs.
var errInterrupted = errors.New("interrupted")

type demo struct {
	out     io.Writer
	bin     string
	version string
	dir     string
	a, b    *dovecottest.Instance
	local   *exec.Cmd
	// localDone is closed once dovewarden local has exited, with its
	// Wait error in localErr.
	localDone chan struct{}
	localErr  error
	localLog  string
	base      string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	bin := fs.String("bin", "bin/dovewarden", "the dovewarden binary to run")
	version := fs.String("dovecot", "2.3", "Dovecot version of both instances: 2.3 (Debian's) or 2.4 (a trixie tree made with mmdebstrap)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version != dovecottest.V23 && *version != dovecottest.V24 {
		return fmt.Errorf("-dovecot %s: want %s or %s", *version, dovecottest.V23, dovecottest.V24)
	}
	if os.Geteuid() != 0 {
		if err := dovecottest.Unavailable(*version); err != nil {
			return otherVersion(err)
		}
		return errors.New(notRoot(*version, dovecottest.Missing(*version)))
	}
	d := &demo{out: out, bin: *bin, version: *version}
	if *version == dovecottest.V23 {
		if err := d.checkTempDir(); err != nil {
			return err
		}
	}
	defer d.stop()
	if err := d.start(ctx); err != nil {
		if ctx.Err() != nil {
			return d.interrupted()
		}
		if d.localLog != "" {
			return fmt.Errorf("%w\n\ndovewarden's log (%s):\n%s", err, d.localLog, tail(d.localLog, 30))
		}
		return err
	}
	if err := d.show(ctx); err != nil {
		if ctx.Err() != nil {
			return d.interrupted()
		}
		return fmt.Errorf("%w\n\ndovewarden's log (%s):\n%s\n\n%s's log:\n%s\n\n%s's log:\n%s", err,
			d.localLog, tail(d.localLog, 30), d.a.Name, logExcerpt(d.a.Log(), 20), d.b.Name, logExcerpt(d.b.Log(), 20))
	}
	d.say("\nMetrics:  %s/metrics\nStatus:   %s/status (all), %s/status/alice, %s/status/bob\n          %s status --url %s [alice bob] (as text)\nIngest:   POST %s/events (Dovecot's exporter)\nLog:      %s\n",
		d.base, d.base, d.base, d.base, d.bin, d.base, d.base, d.localLog)
	// An active-active pair: neither is the primary.
	d.say("IMAP on %s: %s, on %s: %s (users alice and bob, password \"secret\")\n", d.a.Name, d.a.IMAPAddr, d.b.Name, d.b.IMAPAddr)
	d.say("LMTP on %s: %s, on %s: %s (deliver to alice@example.test or bob@example.test)\n", d.a.Name, d.a.LMTPAddr, d.b.Name, d.b.LMTPAddr)
	d.say("\nRunning until Ctrl-C. Try it: deliver or change mail on either side and watch the other.\n")
	if err := d.watch(ctx); err != nil {
		return err
	}
	d.say("\nStopping.\n")
	return nil
}

// watchInterval is how often watch looks whether a Dovecot instance's
// master has exited (dovecottest offers no channel for that, only
// Exited).
const watchInterval = 250 * time.Millisecond

// watch waits until ctx ends (nil) or a process the demo started exits
// before: dovewarden local, or the master of a Dovecot instance. Then the
// demo cannot go on, and the error says which one exited, with its log's
// last lines. (Ctrl-C does not end them first: each runs in a process
// group of its own, which the terminal's signals do not reach; stop ends
// them.)
func (d *demo) watch(ctx context.Context) error {
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.localDone:
			if ctx.Err() != nil {
				return nil
			}
			how := "exit status 0"
			if d.localErr != nil {
				how = d.localErr.Error()
			}
			return fmt.Errorf("%s local exited while the demo was running (%s)\n\ndovewarden's log (%s):\n%s",
				d.bin, how, d.localLog, tail(d.localLog, 30))
		case <-tick.C:
		}
		if ctx.Err() != nil {
			return nil
		}
		for _, in := range []*dovecottest.Instance{d.a, d.b} {
			if in.Exited() {
				//lint:ignore ST1005 the message begins with the product's name
				return fmt.Errorf("Dovecot %s %q (master process %d) exited while the demo was running\n\n%s's log:\n%s",
					in.Version, in.Name, in.PID, in.Name, logExcerpt(in.Log(), 20))
			}
		}
	}
}

// notRoot is the demo's answer to a user other than root: that it needs
// root, and what it would install or create as root (missing), or that
// only root is missing.
func notRoot(version string, missing []string) string {
	var b strings.Builder
	b.WriteString("run the demo as root: it starts Dovecot instances, " +
		"which run as root in a namespace of their own and give the mail to the vmail user, " +
		"and it installs what is missing.\n")
	// make has built both binaries by now; `sudo make demo` would need Go
	// in sudo's secure_path, which it seldom is.
	flags := ""
	if version != dovecottest.V23 {
		flags = " -dovecot " + version
	}
	fmt.Fprintf(&b, "From the repository root: sudo ./bin/demo -bin bin/dovewarden%s\n", flags)
	if len(missing) == 0 {
		fmt.Fprintf(&b, "Dovecot %s is ready here; only root is missing.", version)
		return b.String()
	}
	fmt.Fprintf(&b, "Missing here for Dovecot %s (as root the demo installs it; or install it yourself):", version)
	for _, m := range missing {
		b.WriteString("\n  - " + m)
	}
	return b.String()
}

// otherVersion adds to a *dovecottest.VersionError for Dovecot 2.3 (the
// Dovecot here, or the one this machine's Debian ships, is another
// version) how to run the demo with Dovecot 2.4 instead.
func otherVersion(err error) error {
	var ve *dovecottest.VersionError
	if !errors.As(err, &ve) || ve.Want != dovecottest.V23 {
		return err
	}
	return fmt.Errorf("%w.\nThe demo's default is Debian 12's (bookworm) Dovecot 2.3; here, run it with Dovecot 2.4 "+
		"(a Debian trixie tree made with mmdebstrap): DEMO_FLAGS=\"-dovecot 2.4\" make demo", err)
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

func (d *demo) interrupted() error {
	d.say("\nInterrupted before the demonstration finished. Stopping.\n")
	return errInterrupted
}

func (d *demo) start(ctx context.Context) error {
	// Before anything is installed: each Dovecot instance runs in
	// namespaces of its own.
	if err := dovecottest.CheckNamespaces(d.version); err != nil {
		return err
	}
	d.say("Checking Dovecot %s (installing it when missing) ...\n", d.version)
	if err := dovecottest.Ensure(d.version); err != nil {
		return otherVersion(err)
	}
	if _, err := os.Stat(d.bin); err != nil {
		return fmt.Errorf("dovewarden binary %s: %w (run `make build` first)", d.bin, err)
	}
	var err error
	if d.dir, err = os.MkdirTemp("", "dovewarden-demo-"); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	d.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	snippet, err := os.ReadFile(filepath.Join("config", "dovecot", "events-"+d.version+".conf"))
	if err != nil {
		return fmt.Errorf("the exporter snippet (run the demo from the repository root): %w", err)
	}
	exporter := strings.ReplaceAll(string(snippet), "http://127.0.0.1:8080/events", d.base+"/events")
	users := map[string]string{"alice": "secret", "bob": "secret"}
	for _, side := range []struct {
		inst **dovecottest.Instance
		name string
	}{{&d.a, "mail-a.demo"}, {&d.b, "mail-b.demo"}} {
		d.say("Starting Dovecot %s %q ...\n", d.version, side.name)
		in, err := dovecottest.Start(ctx, dovecottest.Options{Version: d.version, Name: side.name,
			Users: users, ExtraConfig: exporter})
		if err != nil {
			return err
		}
		*side.inst = in
	}
	// Each side syncs to the other: an active-active pair.
	hostMap := map[string]map[string]string{
		d.a.Name: {"url": d.a.DoveadmHTTPURL, "destination": d.b.Destination},
		d.b.Name: {"url": d.b.DoveadmHTTPURL, "destination": d.a.Destination},
	}
	hm, _ := json.MarshalIndent(hostMap, "", "  ")
	hmFile := filepath.Join(d.dir, "host-map.json")
	if err := os.WriteFile(hmFile, hm, 0o600); err != nil {
		return err
	}
	d.localLog = filepath.Join(d.dir, "dovewarden.log")
	logf, err := os.Create(d.localLog)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Its log stays after the run, however the run ends: say where now.
	d.say("Starting dovewarden local on %s (log: %s) ...\n", d.base, d.localLog)
	d.local = exec.Command(d.bin, "local", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--host-map-file", hmFile, "--doveadm-url", d.a.DoveadmHTTPURL, "--destination", d.b.Destination,
		// The demo's passdb strips the domain (username_format=%n), so
		// LMTP's "alice@example.test" is the user "alice".
		"--username-format", "%Ln")
	d.local.Env = append(os.Environ(), "DOVEWARDEN_DOVEADM_PASSWORD="+d.a.DoveadmPassword)
	d.local.Stdout, d.local.Stderr = logf, logf
	// Should the demo itself be killed (SIGKILL), dovewarden goes too, as
	// the Dovecot instances do. In a process group of its own, as they
	// are: Ctrl-C in the terminal ends the demo, whose stop ends
	// dovewarden, and dovewarden exits only when stopped or when it
	// fails, which watch then reports.
	d.local.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := d.local.Start(); err != nil {
		return fmt.Errorf("start %s local: %w", d.bin, err)
	}
	d.localDone = make(chan struct{})
	go func() { d.localErr = d.local.Wait(); close(d.localDone) }()
	if err := waitReady(ctx, d.base+"/readyz", 15*time.Second, d.localDone); err != nil {
		if errors.Is(err, errExited) {
			return fmt.Errorf("%s local exited before it was ready (%v)", d.bin, d.localErr)
		}
		return err
	}
	return nil
}

func (d *demo) stop() {
	if d.localDone != nil {
		_ = d.local.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.localDone:
		case <-time.After(10 * time.Second):
			_ = d.local.Process.Kill()
			<-d.localDone
		}
	}
	// In the reverse order of their start: with Dovecot 2.4, the first
	// may have made parent folders of both mount points in the tree.
	for _, in := range []*dovecottest.Instance{d.b, d.a} {
		if in != nil {
			_ = in.Stop()
		}
	}
	if d.dir != "" {
		// The log stays for a look after the run; the rest goes, and so
		// does the folder when there is no log (an early Ctrl-C).
		_ = os.Remove(filepath.Join(d.dir, "host-map.json"))
		_ = os.Remove(d.dir)
	}
}

// freePort picks a free port for dovewarden below Linux's ephemeral range
// (32768 and up): the port is chosen before the Dovecot instances start,
// and they take their own ports from the ephemeral range, so they cannot
// take this one in between.
func freePort() (int, error) {
	for range 100 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return port, nil
	}
	return 0, errors.New("no free port between 20000 and 32000 on 127.0.0.1")
}

// errExited: the process waitReady waited for exited first.
var errExited = errors.New("exited")

// waitReady waits until url answers 200, the process whose exit closes
// exited exits (errExited: whatever answers on its port then is not it),
// ctx ends, or limit passes.
func waitReady(ctx context.Context, url string, limit time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errExited
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errExited
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s", url, limit)
}

// checkTempDir makes sure that Dovecot 2.3's processes, which run as
// the dovecot and vmail users, can reach the instances' folders, which
// are made in the temporary folder (TMPDIR): every folder on its path
// must be open to other users (o+x). One that is not (a TMPDIR of mode
// 0700, as libpam-tmpdir gives under sudo) keeps Dovecot's auth from
// reading the users file, and every login and dsync fails. Then the demo
// uses /tmp instead, and says so. (Dovecot 2.4 reaches its folder
// through a mount point in its tree, whatever TMPDIR's modes.)
func (d *demo) checkTempDir() error {
	tmp := os.TempDir()
	closed, err := closedFolder(tmp)
	if err != nil {
		return fmt.Errorf("TMPDIR %s: %w", tmp, err)
	}
	if closed == "" {
		return nil
	}
	if c, err := closedFolder("/tmp"); err != nil || c != "" {
		return fmt.Errorf("TMPDIR %s: %s is not open to other users (o+x), nor is /tmp: "+
			"Dovecot's processes (as the dovecot and vmail users) must reach the instances' folders in it; "+
			"set TMPDIR to a folder they can reach", tmp, closed)
	}
	d.say("TMPDIR %s: %s is not open to other users (o+x), and Dovecot's processes (as the dovecot and vmail users) "+
		"must reach the instances' folders in it: using /tmp instead.\n", tmp, closed)
	return os.Setenv("TMPDIR", "/tmp")
}

// closedFolder returns the first folder on the path of dir (its links
// resolved), from the root down to dir itself, that other users cannot
// traverse (no o+x), or "" when there is none.
func closedFolder(dir string) (string, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return "", err
	}
	var path []string
	for d := real; ; d = filepath.Dir(d) {
		path = append(path, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(path) - 1; i >= 0; i-- {
		fi, err := os.Stat(path[i])
		if err != nil {
			return "", err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return path[i], nil
		}
	}
	return "", nil
}

// logExcerpt returns the last n lines of a Dovecot log, after its last
// error lines before those (at most 10): the cause of a failure, such as
// auth unable to read the users file, is often logged once, long before
// the demo gives up waiting.
func logExcerpt(log string, n int) string {
	all := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(all) <= n {
		return strings.Join(all, "\n")
	}
	var errs []string
	for _, l := range all[:len(all)-n] {
		if strings.Contains(l, "Error: ") || strings.Contains(l, "Fatal: ") || strings.Contains(l, "Panic: ") {
			errs = append(errs, l)
		}
	}
	if len(errs) > 10 {
		errs = errs[len(errs)-10:]
	}
	last := strings.Join(all[len(all)-n:], "\n")
	if len(errs) == 0 {
		return "[...]\n" + last
	}
	return "[its last errors before the last " + strconv.Itoa(n) + " lines:]\n" + strings.Join(errs, "\n") + "\n[...]\n" + last
}

func tail(file string, lines int) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), lines)
}

func lastLines(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
