package dovecottest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds used when starting and stopping instances.
const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
)

// Instance is a running Dovecot test instance listening on 127.0.0.1.
type Instance struct {
	Version    string // "2.3" or "2.4"
	Name       string // instance_name and the hostname seen in events
	Dir        string // instance folder (config, users, log, mail)
	ConfigPath string // path of dovecot.conf (same path inside the 2.4 chroot)
	PID        int    // PID of the dovecot master process

	Ports           Ports
	IMAPAddr        string // "127.0.0.1:port"
	POP3Addr        string // "127.0.0.1:port"
	LMTPAddr        string // "127.0.0.1:port"
	DoveadmAddr     string // doveadm TCP, dsync's other end
	Destination     string // this instance as a dsync destination: "tcp:" + DoveadmAddr, or "tcps:" with DoveadmCertFile
	DoveadmHTTPURL  string // "http://127.0.0.1:port/doveadm/v1", https with DoveadmCertFile
	StatsHTTPAddr   string // stats (OpenMetrics) HTTP listener
	ManageSieveAddr string // "127.0.0.1:port", ManageSieve (RFC 5804)

	DoveadmPassword string

	client   *http.Client // DoveadmHTTP's: trusts ClientCAFile too
	root     string       // chroot for 2.4, empty for 2.3
	vmail    vmailUser    // the vmail user's ids where Dovecot runs
	madeDirs []string     // mount point folders created in the chroot, deepest first
	ownDir   bool         // Dir was created by Start and is removed by Stop
	logCache string       // log captured before an own Dir is removed
	startups int          // "starting up" lines of the master in the log so far
	cmd      *exec.Cmd
	done     chan struct{}
	stopOnce sync.Once
	stopErr  error
	stopped  bool // Stop was called: the instance cannot be restarted
}

// Start generates a config for opts, validates it with doveconf, starts
// Dovecot in the foreground and waits until its IMAP port accepts. It calls
// Ensure first, so Dovecot is installed when missing.
func Start(ctx context.Context, opts Options) (*Instance, error) {
	ownDir := opts.Dir == ""
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	if err := Ensure(opts.Version); err != nil {
		if ownDir {
			_ = os.RemoveAll(opts.Dir)
		}
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		in, err := startOnce(ctx, opts)
		if err == nil {
			in.ownDir = ownDir
			return in, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "in use") {
			break
		}
	}
	if ownDir {
		_ = os.RemoveAll(opts.Dir)
	}
	return nil, lastErr
}

func startOnce(ctx context.Context, opts Options) (*Instance, error) {
	pp, err := freePorts(7)
	if err != nil {
		return nil, err
	}
	p := Ports{IMAP: pp[0], POP3: pp[1], LMTP: pp[2], Doveadm: pp[3], DoveadmHTTP: pp[4], StatsHTTP: pp[5],
		ManageSieve: pp[6]}
	// vmail as the Dovecot of this version resolves the name: in the
	// host's passwd for 2.3, in the tree's for 2.4.
	var root string
	if opts.Version == V24 {
		root = Root24()
	}
	vmail, err := vmailIDs(root)
	if err != nil {
		return nil, err
	}
	conf, err := prepareDir(opts, p, vmail)
	if err != nil {
		return nil, err
	}
	addr := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
	client, err := doveadmClient(opts.ClientCAFile)
	if err != nil {
		return nil, err
	}
	tcp, web := "tcp:", "http"
	if opts.DoveadmCertFile != "" {
		tcp, web = "tcps:", "https"
	}
	in := &Instance{
		Version: opts.Version, Name: opts.Name, Dir: opts.Dir, ConfigPath: conf,
		Ports: p, IMAPAddr: addr(p.IMAP), POP3Addr: addr(p.POP3), LMTPAddr: addr(p.LMTP),
		DoveadmAddr:     addr(p.Doveadm),
		Destination:     tcp + addr(p.Doveadm),
		DoveadmHTTPURL:  fmt.Sprintf("%s://127.0.0.1:%d/doveadm/v1", web, p.DoveadmHTTP),
		StatsHTTPAddr:   addr(p.StatsHTTP),
		ManageSieveAddr: addr(p.ManageSieve),
		DoveadmPassword: opts.DoveadmPassword,
		client:          client,
		vmail:           vmail,
	}
	if opts.Version == V24 {
		in.root = root
		if err := in.makeMountPoint(); err != nil {
			return nil, err
		}
	}
	// Truncate the log so Log() shows only this run.
	_ = os.WriteFile(in.logPath(), nil, 0o644)
	if out, err := in.command(ctx, "doveconf", "-n", "-c", conf).CombinedOutput(); err != nil {
		in.removeMountPoint()
		// unshare fails as doveconf does: tell the two apart.
		if nerr := CheckNamespaces(opts.Version); nerr != nil {
			return nil, nerr
		}
		return nil, fmt.Errorf("dovecottest: invalid config %s: %w\n%s", conf, err, out)
	}
	if err := in.launch(os.O_TRUNC); err != nil {
		in.removeMountPoint()
		return nil, err
	}
	if err := in.waitReady(ctx); err != nil {
		_ = in.Stop()
		return nil, fmt.Errorf("%w\n--- log ---\n%s", err, in.Log())
	}
	return in, nil
}

// launch starts the dovecot master in the foreground with its standard
// error going to stderr.log (opened with the extra flag: O_TRUNC for a new
// instance, O_APPEND for a restart) and watches for its exit.
func (in *Instance) launch(flag int) error {
	stderr, err := os.OpenFile(filepath.Join(in.Dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|flag, 0o644)
	if err != nil {
		return fmt.Errorf("dovecottest: create stderr log: %w", err)
	}
	defer stderr.Close()
	// Not bound to a context: the instance lives until Stop.
	cmd := in.command(context.Background(), "dovecot", "-F", "-c", in.ConfigPath)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dovecottest: start dovecot %s: %w", in.Version, err)
	}
	// The goroutine closes its own channel: a later Restart replaces
	// in.done only after this one was closed.
	done := make(chan struct{})
	in.cmd, in.PID, in.done = cmd, cmd.Process.Pid, done
	go func() { _ = cmd.Wait(); close(done) }()
	return nil
}

// startingUp is what the master logs once every listener is bound; a
// listener it cannot bind (a port taken since freePorts) makes it exit
// before, even if IMAP was bound and briefly accepted.
const startingUp = "starting up for "

// waitReady waits until the master logged that it started (once more than
// before) and the IMAP port accepts, the process dies, or a bound.
func (in *Instance) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(startTimeout)
	for {
		if n := in.countStartups(); n > in.startups {
			c, err := net.DialTimeout("tcp", in.IMAPAddr, time.Second)
			if err == nil {
				c.Close()
				in.startups = n
				return nil
			}
		}
		select {
		case <-in.done:
			return fmt.Errorf("dovecottest: dovecot %s exited during startup", in.Version)
		case <-ctx.Done():
			return fmt.Errorf("dovecottest: waiting for IMAP port: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dovecottest: IMAP port %s not accepting after %s", in.IMAPAddr, startTimeout)
		}
	}
}

// CheckNamespaces reports whether this process can create the namespaces
// an instance of the version runs in (a UTS namespace, and for 2.4 a
// mount namespace too): that needs CAP_SYS_ADMIN, which root has on a
// machine but not in a container that is not privileged (Docker's
// default).
func CheckNamespaces(version string) error {
	args := []string{"--uts"}
	if version == V24 {
		args = append(args, "--mount")
	}
	cmd := exec.Command("/usr/bin/unshare", append(args, "true")...)
	cmd.Env = append(os.Environ(), sbinPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dovecottest: cannot create the namespaces a Dovecot instance runs in (unshare %s: %v: %s): "+
			"that needs root with CAP_SYS_ADMIN (in a container: docker run --privileged)",
			strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// command builds an exec.Cmd that runs a Dovecot binary for this instance:
// in a new UTS namespace whose hostname is the instance name and, for 2.4,
// in a new mount namespace with the instance folder bind-mounted into the
// chroot at the same path.
func (in *Instance) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	path := binDir + bin
	if bin == "dovecot" {
		path = dovecotBin
	}
	var a []string
	if in.root == "" {
		script := `hostname "$1" && shift && exec "$@"`
		a = append([]string{"--uts", "--", "sh", "-c", script, "sh", in.Name, path}, args...)
	} else {
		script := `d=$1 r=$2 n=$3; shift 3; mount --rbind "$d" "$r$d" && hostname "$n" && exec chroot "$r" "$@"`
		a = append([]string{"--mount", "--uts", "--", "sh", "-c", script, "sh", in.Dir, in.root, in.Name, path}, args...)
	}
	cmd := exec.CommandContext(ctx, "/usr/bin/unshare", a...)
	cmd.Env = append(os.Environ(), sbinPath)
	return cmd
}

// Doveadm runs `doveadm -c CONF args...` for this instance (inside the
// chroot for 2.4) and returns its standard output.
func (in *Instance) Doveadm(ctx context.Context, args ...string) ([]byte, error) {
	cmd := in.command(ctx, "doveadm", append([]string{"-c", in.ConfigPath}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("dovecottest: doveadm %s: %w: %s",
			strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// DoveadmScript writes an executable shell script into dir that runs this
// instance's doveadm (inside the chroot for 2.4, as Doveadm does) with the
// script's arguments, and returns its path: a doveadm binary for the
// doveadm-exec transport, which passes -c CONF itself.
func (in *Instance) DoveadmScript(dir string) (string, error) {
	var b strings.Builder
	b.WriteString("#!/bin/sh\nexport " + sbinPath + "\nexec")
	for _, a := range in.command(context.Background(), "doveadm").Args {
		b.WriteString(" '" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	b.WriteString(` "$@"` + "\n")
	path := filepath.Join(dir, "doveadm-"+in.Name)
	if err := os.WriteFile(path, []byte(b.String()), 0o755); err != nil {
		return "", fmt.Errorf("dovecottest: write doveadm script: %w", err)
	}
	return path, nil
}

// ldaBin is Dovecot's LDA, in Debian's packages of 2.3 and 2.4.
const ldaBin = "/usr/lib/dovecot/dovecot-lda"

// LDA delivers msg to user with dovecot-lda run as the vmail user, as an
// MTA's pipe or mailbox_command runs it (not as root), and returns what it
// wrote. Its log goes to its standard error, which vmail can write.
func (in *Instance) LDA(ctx context.Context, user, msg string) ([]byte, error) {
	cmd := in.command(ctx, "setpriv", "--reuid", strconv.Itoa(in.vmail.UID), "--regid", strconv.Itoa(in.vmail.GID), "--clear-groups",
		ldaBin, "-c", in.ConfigPath, "-o", "log_path=/dev/stderr", "-o", "info_log_path=/dev/stderr", "-d", user)
	cmd.Stdin = strings.NewReader(msg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("dovecottest: dovecot-lda -d %s as %s: %w: %s", user, vmailName, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Stop terminates the instance: SIGTERM to the master, a bounded wait, then
// SIGKILL to the master and its whole process group. It is idempotent. A
// Dir that Start created itself is removed (Log keeps working).
func (in *Instance) Stop() error {
	in.stopOnce.Do(func() {
		in.stopped = true
		in.stopErr = in.stop()
		if in.ownDir {
			in.logCache = in.Log()
			if err := os.RemoveAll(in.Dir); err != nil {
				in.stopErr = errors.Join(in.stopErr, fmt.Errorf("dovecottest: remove %s: %w", in.Dir, err))
			}
		}
	})
	return in.stopErr
}

func (in *Instance) stop() error {
	defer in.removeMountPoint()
	if in.cmd == nil || in.PID <= 0 {
		return nil
	}
	var errs []error
	if err := syscall.Kill(in.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		errs = append(errs, fmt.Errorf("dovecottest: SIGTERM %d: %w", in.PID, err))
	}
	select {
	case <-in.done:
	case <-time.After(stopTimeout):
		errs = append(errs, fmt.Errorf("dovecottest: dovecot %d did not exit in %s, killing", in.PID, stopTimeout))
		_ = syscall.Kill(in.PID, syscall.SIGKILL)
		<-in.done
	}
	// Whatever is left of the process group (children that outlived the
	// master), then wait (bounded) until the group is gone.
	if err := syscall.Kill(-in.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		errs = append(errs, fmt.Errorf("dovecottest: kill process group %d: %w", in.PID, err))
	}
	deadline := time.Now().Add(stopTimeout)
	for groupAlive(in.PID) {
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("dovecottest: process group %d still alive after %s", in.PID, stopTimeout))
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// makeMountPoint creates the folder inside the 2.4 chroot where the
// instance folder is bind-mounted, remembering which folders it created,
// and records the parent folders it created in the tree's list of them
// (withMadeParents), for whichever instance is the last to leave them.
func (in *Instance) makeMountPoint() error {
	return withMadeParents(in.root, func(parents map[string]bool) error {
		var missing []string
		for d := in.root + in.Dir; len(d) > len(in.root); d = filepath.Dir(d) {
			if _, err := os.Stat(d); err == nil {
				break
			}
			missing = append(missing, d)
		}
		if err := os.MkdirAll(in.root+in.Dir, 0o755); err != nil {
			return fmt.Errorf("dovecottest: create mount point in chroot: %w", err)
		}
		in.madeDirs = missing
		if len(missing) > 1 {
			for _, d := range missing[1:] {
				parents[strings.TrimPrefix(d, in.root)] = true
			}
		}
		return nil
	})
}

// madeParentsName is a file in the 2.4 tree listing, one a line, the
// folders (paths inside the tree) that makeMountPoint created as parents
// of mount points and that are not removed yet.
const madeParentsName = ".dovecottest-mount-parents"

// withMadeParents calls f with the set of the tree's made parent folders,
// under an exclusive lock on the file that lists them (so that one
// process does not remove a folder another is creating a mount point in),
// and writes the set back. Without the file (a tree that cannot be
// written) f gets an empty set that is not kept.
func withMadeParents(root string, f func(map[string]bool) error) error {
	parents := map[string]bool{}
	file, err := os.OpenFile(filepath.Join(root, madeParentsName), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return f(parents)
	}
	defer file.Close()
	if err := syscall.Flock(int(file.Fd()), syscall.LOCK_EX); err != nil {
		return f(parents)
	}
	defer func() { _ = syscall.Flock(int(file.Fd()), syscall.LOCK_UN) }()
	b, _ := io.ReadAll(file)
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			parents[l] = true
		}
	}
	ferr := f(parents)
	list := make([]string, 0, len(parents))
	for p := range parents {
		list = append(list, p+"\n")
	}
	sort.Strings(list)
	if err := file.Truncate(0); err == nil {
		_, _ = file.WriteAt([]byte(strings.Join(list, "")), 0)
	}
	return ferr
}

// groupAlive reports whether a process of group pgid is still running
// (zombies, which PID 1 reaps at its own pace, do not count).
func groupAlive(pgid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// "pid (comm) state ppid pgrp ...": comm may hold spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// removeMountPoint removes the (empty) mount point folder that
// makeMountPoint created inside the chroot, and then each parent folder
// up to the tree's root that is empty now and was created by this or
// another instance's makeMountPoint: instances whose folders share a
// parent that is not in the tree (a TMPDIR below /tmp) leave nothing
// behind, whichever stops last. Folders of the tree itself (its /tmp)
// stay.
func (in *Instance) removeMountPoint() {
	if len(in.madeDirs) == 0 {
		return
	}
	own := map[string]bool{}
	for _, d := range in.madeDirs {
		own[d] = true
	}
	_ = withMadeParents(in.root, func(parents map[string]bool) error {
		for d := in.root + in.Dir; len(d) > len(in.root); d = filepath.Dir(d) {
			rel := strings.TrimPrefix(d, in.root)
			if !own[d] && !parents[rel] {
				break
			}
			if os.Remove(d) != nil {
				break
			}
			delete(parents, rel)
		}
		return nil
	})
	in.madeDirs = nil
}

func (in *Instance) logPath() string { return filepath.Join(in.Dir, "dovecot.log") }

// countStartups counts the master's "starting up" lines in the log.
func (in *Instance) countStartups() int {
	l, err := os.ReadFile(in.logPath())
	if err != nil {
		return 0
	}
	return strings.Count(string(l), startingUp)
}

// Log returns the instance's log file (and anything Dovecot wrote to its
// standard error), for test failure messages.
func (in *Instance) Log() string {
	if in.logCache != "" {
		return in.logCache
	}
	var b strings.Builder
	if s, err := os.ReadFile(filepath.Join(in.Dir, "stderr.log")); err == nil && len(s) > 0 {
		b.WriteString("--- stderr ---\n")
		b.Write(s)
	}
	if l, err := os.ReadFile(in.logPath()); err == nil {
		b.Write(l)
	}
	return b.String()
}

// LogSays reports whether the instance's log holds s within the given
// time. Dovecot's processes write through its log process, so a line a
// command caused may land a moment after the command has answered.
func (in *Instance) LogSays(s string, within time.Duration) bool {
	for deadline := time.Now().Add(within); ; time.Sleep(50 * time.Millisecond) {
		if strings.Contains(in.Log(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// Exited reports whether the master process has exited.
func (in *Instance) Exited() bool {
	select {
	case <-in.done:
		return true
	default:
		return false
	}
}

// StartT starts an instance for a test, fails the test with the log on
// error, and stops the instance in t.Cleanup, logging the Dovecot log when
// the test failed. (An empty opts.Dir becomes a temporary folder that vmail
// can traverse, which t.TempDir() is not.)
func StartT(t testing.TB, opts Options) *Instance {
	t.Helper()
	in, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("start dovecot %s: %v", opts.Version, err)
	}
	t.Cleanup(func() {
		err := in.Stop()
		if err != nil {
			t.Errorf("stop dovecot %s: %v", in.Version, err)
		}
		if t.Failed() {
			t.Logf("dovecot %s %s log:\n%s", in.Version, in.Name, in.Log())
		}
	})
	return in
}

// ServerVersion returns the output of `dovecot --version` for this
// instance's Dovecot (inside the chroot for 2.4).
func (in *Instance) ServerVersion(ctx context.Context) (string, error) {
	out, err := in.command(ctx, "dovecot", "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("dovecottest: dovecot --version: %w: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
