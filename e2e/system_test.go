package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/internal/redistest"
)

// password is every test user's IMAP/POP3 password.
const password = "pass"

// Server names: the hostname Dovecot reports in its events (each instance
// runs in its own UTS namespace), and so the keys of the host map.
const (
	nameA = "mail-a.test"
	nameB = "mail-b.test"
)

// shape is how dovewarden runs.
type shape string

const (
	// shapeLocal is `dovewarden local`: one process.
	shapeLocal shape = "local"
	// shapeSplit is `dovewarden broker`, `sync` and `ingest` as three
	// processes talking HTTP, as on a cluster.
	shapeSplit shape = "split"
)

// config describes one system under test.
type config struct {
	shape shape
	// a and b are the Dovecot versions of the two servers. A is where the
	// scenarios make their changes ("primary"); B is the replica, or the
	// other side of an active-active pair.
	a, b  string
	users []string
	// realRedis gives `dovewarden local` a redis-server instead of its
	// embedded one (the split shape always has one).
	realRedis bool
	// sentinel makes that Redis a primary with a replica, watched by a
	// Sentinel, which dovewarden asks for the primary (?master_name=).
	sentinel bool
	// syncFlags are extra settings of sync (both shapes); ingestFlags
	// extra settings of ingest's handler (both shapes).
	syncFlags, ingestFlags []string
	// exporterAuth is "user:password" for ingest's Basic auth: ingest
	// requires it and Dovecot's exporter URL carries it.
	exporterAuth string
	// tls makes ingest's listener (local's one listener) serve HTTPS with
	// a certificate of suiteCA, which Dovecot's exporters trust, and puts
	// both doveadm hops on TLS: sync calls https doveadm URLs, trusting
	// suiteCA through --doveadm-ca-file, and dsync connects to tcps:
	// destinations, Dovecot trusting suiteCA through ssl_client_ca_file.
	tls bool
	// dovecotA is Dovecot configuration added to A's alone, dovecot to
	// both servers'.
	dovecotA, dovecot string
	// staticUserdb gives both servers a userdb Dovecot cannot list
	// (dovecottest.Options.StaticUserdb).
	staticUserdb bool
	// processPerConnection keeps Dovecot's default of a new process for
	// each IMAP, POP3 and ManageSieve connection. Other systems' servers
	// reuse those processes (dovecottest.Options.ReuseProcesses), which
	// halves what a case costs in CPU. dsync runs as by default in both.
	processPerConnection bool
}

// system is two Dovecot servers, dovewarden and its Redis, all started by
// one test and stopped when it ends.
type system struct {
	t    testing.TB
	ctx  context.Context
	cfg  config
	dir  string
	a, b *dovecottest.Instance

	redis     *proc
	redisAddr string
	// cfg.sentinel: the primary, its replica and the Sentinel.
	redisPrimary, redisReplica *redistest.Server
	sentinel                   *redistest.Sentinel

	local  *proc // shapeLocal
	broker *proc // shapeSplit
	sync   *proc // shapeSplit
	ingest *proc // shapeSplit

	ingestBase string   // ingest's base URL (local: the one listener)
	tlsArgs    []string // cfg.tls: ingest's (local's) certificate settings
	brokerURL  string   // the broker ingress: where CloudEvents go
	syncBase   string   // shapeSplit: sync's base URL
	events     *collector
}

// newSystem starts everything cfg describes: both Dovecot servers with
// the shipped exporter snippet pointed at ingest, each user's mail created
// on A and synced once to B by the test itself (see prepareUser), then
// Redis and dovewarden.
func newSystem(t testing.TB, cfg config) *system {
	t.Helper()
	needRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := &system{t: t, ctx: ctx, cfg: cfg, dir: t.TempDir(), events: newCollector(t)}
	// Registered first, so it runs last, when every process has stopped.
	t.Cleanup(s.checkOneDsyncAtATime)

	// Reserve dovewarden's ports before Dovecot picks its own, so none of
	// Dovecot's is one of them. Until dovewarden starts, the ingest port
	// answers 200 to every event: the setup's events are swallowed
	// instead of stalling Dovecot's exporter.
	ingestLn := freeAddr(t)
	scheme := "http://"
	if cfg.tls {
		scheme = "https://"
		s.tlsArgs = listenerCert(t, s.dir)
	}
	s.ingestBase = scheme + ingestLn.Addr().String()
	swallow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ReadHeaderTimeout: time.Second}
	if cfg.tls {
		go func() { _ = swallow.ServeTLS(ingestLn, s.tlsArgs[1], s.tlsArgs[3]) }()
	} else {
		go func() { _ = swallow.Serve(ingestLn) }()
	}
	var brokerLn, syncLn, redisLn net.Listener
	if cfg.shape == shapeSplit {
		brokerLn, syncLn = freeAddr(t), freeAddr(t)
		s.brokerURL = "http://" + brokerLn.Addr().String() + "/"
		s.syncBase = "http://" + syncLn.Addr().String()
	} else {
		s.brokerURL = s.ingestBase + "/local/dovewarden"
	}
	if (cfg.shape == shapeSplit || cfg.realRedis) && !cfg.sentinel {
		redisLn = freeAddr(t)
		s.redisAddr = redisLn.Addr().String()
	}

	users := map[string]string{}
	for _, u := range cfg.users {
		users[u] = password
	}
	exporterURL := s.ingestBase + "/events"
	if cfg.exporterAuth != "" {
		exporterURL = scheme + cfg.exporterAuth + "@" + ingestLn.Addr().String() + "/events"
	}
	optsA := dovecottest.Options{Version: cfg.a, Name: nameA, Users: users, ExtraConfig: exporterSnippet(t, cfg.a, exporterURL) + cfg.dovecot + cfg.dovecotA}
	optsB := dovecottest.Options{Version: cfg.b, Name: nameB, Users: users, ExtraConfig: exporterSnippet(t, cfg.b, exporterURL) + cfg.dovecot}
	optsA.StaticUserdb, optsB.StaticUserdb = cfg.staticUserdb, cfg.staticUserdb
	optsA.ReuseProcesses, optsB.ReuseProcesses = !cfg.processPerConnection, !cfg.processPerConnection
	if cfg.tls {
		for _, o := range []*dovecottest.Options{&optsA, &optsB} {
			o.ClientCAFile = suiteCA.File
			o.DoveadmCertFile, o.DoveadmKeyFile = doveadmCert(t, s.dir, o.Name)
		}
	}
	s.a = dovecottest.StartT(t, optsA)
	s.b = dovecottest.StartT(t, optsB)
	for _, u := range cfg.users {
		s.prepareUser(u)
	}

	_ = swallow.Close()
	if redisLn != nil {
		redisLn.Close()
		s.startRedis()
	}
	if cfg.sentinel {
		s.redisPrimary = redistest.Start(t)
		s.redisReplica = redistest.StartWith(t, redistest.Options{ReplicaOf: s.redisPrimary})
		s.sentinel = redistest.StartSentinel(t, s.redisPrimary, "dovewarden")
	}
	if cfg.shape == shapeSplit {
		brokerLn.Close()
		syncLn.Close()
		s.startSplit(ingestLn.Addr().String(), brokerLn.Addr().String(), syncLn.Addr().String())
	} else {
		s.startLocal(ingestLn.Addr().String())
	}
	return s
}

// exporterSnippet is config/dovecot/events-VERSION.conf, the exporter
// configuration the project ships, with its URL pointed at ingest.
func exporterSnippet(t testing.TB, version, url string) string {
	b, err := os.ReadFile(filepath.Join("..", "config", "dovecot", "events-"+version+".conf"))
	if err != nil {
		t.Fatalf("the shipped exporter snippet: %v", err)
	}
	const shipped = "http://127.0.0.1:8080/events"
	if !strings.Contains(string(b), shipped) {
		t.Fatalf("events-%s.conf no longer points at %s: update the e2e suite", version, shipped)
	}
	return strings.ReplaceAll(string(b), shipped, url)
}

// prepareUser creates user's mail on A and syncs it to B once through A's
// doveadm HTTP API, before dovewarden runs. Dovecot 2.3 cannot merge a
// user whose INBOX or auto-created folders were opened on both sides
// before their first dsync ("Remote lost mailbox GUID", exit code 2 on
// every later sync), so the folders are created on A alone first and
// nothing reads B before this sync.
func (s *system) prepareUser(user string) {
	t := s.t
	t.Helper()
	c, err := dovecottest.LoginIMAP(s.ctx, s.a.IMAPAddr, user, password)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// EXAMINE creates an auto-created folder for real.
	for _, mb := range []string{"INBOX", "Drafts", "Sent", "Trash", "Archive"} {
		if _, tagged, err := c.Cmd(s.ctx, "EXAMINE "+mb); err != nil || !dovecottest.IsOK(tagged) {
			t.Fatalf("EXAMINE %s for %s: %v %s", mb, user, err, tagged)
		}
	}
	if _, err := c.Append(s.ctx, "INBOX", `(\Seen)`, message(user, "seed", "The mail the user had before the test.")); err != nil {
		t.Fatal(err)
	}
	err = poll(s.ctx, time.Minute, 200*time.Millisecond, func() error {
		// A first sync of a changed user may answer exit code 2: again.
		_, err := s.a.Sync(s.ctx, user, s.b)
		return err
	})
	if err != nil {
		t.Fatalf("initial sync of %s: %v", user, err)
	}
	a, b := s.snapshots(user)
	if !a.equal(b) {
		t.Fatalf("after the initial sync %s differs:\n%s", user, diff(a, b))
	}
}

// message returns a test message with a unique Message-ID.
func message(user, tag, body string) string {
	return fmt.Sprintf("From: sender@example.test\r\nTo: %s@example.test\r\nSubject: %s\r\n"+
		"Message-ID: <%s.%s@e2e.test>\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n%s\r\n", user, tag, tag, user, body)
}

// hostMap writes the host map of an active-active pair: a change seen on
// A syncs A->B, one on B syncs B->A.
func (s *system) hostMap() string {
	m := map[string]map[string]string{
		s.a.Name: {"url": s.a.DoveadmHTTPURL, "destination": s.b.Destination},
		s.b.Name: {"url": s.b.DoveadmHTTPURL, "destination": s.a.Destination},
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	path := filepath.Join(s.dir, "host-map.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// syncArgs are the sync settings both shapes share.
func (s *system) syncArgs() []string {
	args := []string{"--host-map-file", s.hostMap(), "--doveadm-url", s.a.DoveadmHTTPURL,
		"--destination", s.b.Destination, "--log-level", "debug"}
	if s.cfg.tls {
		args = append(args, "--doveadm-ca-file", suiteCA.File)
	}
	return append(args, s.cfg.syncFlags...)
}

// ingestArgs are ingest's handler settings both shapes share. The test
// passdb strips domains, and LMTP events carry "u1@example.test".
func (s *system) ingestArgs() []string {
	args := []string{"--username-format", "%Ln"}
	if user, pass, ok := strings.Cut(s.cfg.exporterAuth, ":"); ok {
		args = append(args, "--auth-user", user, "--auth-password", pass)
	}
	args = append(args, s.tlsArgs...)
	return append(args, s.cfg.ingestFlags...)
}

func (s *system) secretEnv() []string {
	return []string{"DOVEWARDEN_DOVEADM_PASSWORD=" + s.a.DoveadmPassword}
}

// redisURL is the --redis-url dovewarden gets: the Sentinel's, the
// redis-server's, or "" for local's embedded one.
func (s *system) redisURL() string {
	switch {
	case s.sentinel != nil:
		return s.sentinel.URL()
	case s.redisAddr != "":
		return "redis://" + s.redisAddr + "/0"
	}
	return ""
}

func (s *system) startLocal(addr string) {
	args := append([]string{"local", "--listen", addr, "--triggers", s.events.triggers(s.dir)}, s.events.subscribers()...)
	if url := s.redisURL(); url != "" {
		args = append(args, "--redis-url", url)
	}
	args = append(append(args, s.syncArgs()...), s.ingestArgs()...)
	s.local = newProc(s.t, s.dir, "dovewarden-local", dovewardenBin, args, s.secretEnv())
	s.local.start()
	s.local.waitHTTP(s.ingestBase+"/readyz", 20*time.Second)
}

func (s *system) startSplit(ingestAddr, brokerAddr, syncAddr string) {
	redisURL := s.redisURL()
	bargs := []string{"broker", "--listen", brokerAddr, "--triggers", s.events.triggers(s.dir),
		"--subscriber", "dovewarden-sync-high=" + s.syncBase + "/",
		"--subscriber", "dovewarden-sync-low=" + s.syncBase + "/", "--log-level", "debug",
		"--spool-file", filepath.Join(s.dir, "broker.spool")}
	s.broker = newProc(s.t, s.dir, "dovewarden-broker", dovewardenBin, append(bargs, s.events.subscribers()...), nil)
	sargs := append([]string{"sync", "--listen", syncAddr, "--redis-url", redisURL, "--results-sink", s.brokerURL}, s.syncArgs()...)
	s.sync = newProc(s.t, s.dir, "dovewarden-sync", dovewardenBin, sargs, s.secretEnv())
	iargs := append([]string{"ingest", "--listen", ingestAddr, "--broker-url", s.brokerURL, "--redis-url", redisURL}, s.ingestArgs()...)
	s.ingest = newProc(s.t, s.dir, "dovewarden-ingest", dovewardenBin, iargs, nil)
	brokerBase := strings.TrimSuffix(s.brokerURL, "/")
	s.broker.start()
	s.sync.start()
	s.ingest.start()
	s.broker.waitHTTP(brokerBase+"/readyz", 20*time.Second)
	s.sync.waitHTTP(s.syncBase+"/readyz", 20*time.Second)
	s.ingest.waitHTTP(s.ingestBase+"/readyz", 20*time.Second)
}

// snapshots reads user's state on both servers, failing the test when
// one cannot be read.
func (s *system) snapshots(user string) (a, b *snapshot) {
	s.t.Helper()
	a, err := readSnapshot(s.ctx, s.a, user)
	if err != nil {
		s.t.Fatal(err)
	}
	b, err = readSnapshot(s.ctx, s.b, user)
	if err != nil {
		s.t.Fatal(err)
	}
	return a, b
}

// convergeLimit bounds how long replication may take. Generous: Dovecot's
// exporter and dsync are slow under load on a 2-core CI machine, and the
// suite asserts convergence, not speed.
const convergeLimit = 60 * time.Second

// awaitConverged waits until each user's state is the same on both
// servers, and returns A's snapshots. On the deadline it fails the test
// with the difference.
func (s *system) awaitConverged(users ...string) map[string]*snapshot {
	s.t.Helper()
	out := map[string]*snapshot{}
	for _, u := range users {
		a, err := s.converged(u, convergeLimit)
		if err != nil {
			failures.reason(s.t, fmt.Sprintf("%s not replicated: %v", u, err))
			s.t.Fatalf("%s not replicated: %v", u, err)
		}
		out[u] = a
	}
	return out
}

// converged polls until user's state is the same on both servers and
// returns A's snapshot, or the difference after limit.
func (s *system) converged(user string, limit time.Duration) (*snapshot, error) {
	var a, b *snapshot
	err := poll(s.ctx, limit, 50*time.Millisecond, func() error {
		s.checkAlive()
		var err error
		if a, err = readSnapshot(s.ctx, s.a, user); err != nil {
			return err
		}
		if b, err = readSnapshot(s.ctx, s.b, user); err != nil {
			return err
		}
		if !a.equal(b) {
			return fmt.Errorf("%s differs:\n%s", user, diff(a, b))
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("%w\n%s", err, s.diagnose(user))
	}
	return a, err
}

// diagnose describes a user that did not converge: each server's
// mailboxes as doveadm sees them, then what one more plain dsync (A to B,
// no state and no -f: `doveadm sync` as an admin would run it) answers,
// and whether the user converges after it.
func (s *system) diagnose(user string) string {
	var b strings.Builder
	for _, in := range []*dovecottest.Instance{s.a, s.b} {
		out, err := in.Doveadm(s.ctx, "mailbox", "status", "-u", user, "guid uidvalidity uidnext highestmodseq messages", "*")
		fmt.Fprintf(&b, "doveadm mailbox status on %s (err %v):\n%s", in.Name, err, out)
	}
	out, err := s.a.Sync(s.ctx, user, s.b)
	fmt.Fprintf(&b, "one more dsync %s -> %s: err %v, reply %s\n", s.a.Name, s.b.Name, err, out)
	a, aerr := readSnapshot(s.ctx, s.a, user)
	bs, berr := readSnapshot(s.ctx, s.b, user)
	switch {
	case aerr != nil || berr != nil:
		fmt.Fprintf(&b, "snapshots after it: %v %v\n", aerr, berr)
	case a.equal(bs):
		b.WriteString("after it both servers are the same\n")
	default:
		fmt.Fprintf(&b, "after it they still differ:\n%s", diff(a, bs))
	}
	return b.String()
}

// checkAlive fails the test when a dovewarden process died on its own.
func (s *system) checkAlive() {
	s.t.Helper()
	for _, p := range []*proc{s.local, s.broker, s.sync, s.ingest, s.redis} {
		if p != nil && p.cmd != nil {
			p.checkAlive()
		}
	}
}

// imap logs in to in as user, closing the session when the test ends.
func (s *system) imap(in *dovecottest.Instance, user string) *dovecottest.IMAPSession {
	s.t.Helper()
	c, err := dovecottest.LoginIMAP(s.ctx, in.IMAPAddr, user, password)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// do runs IMAP commands in order, failing the test on any reply but OK.
func (s *system) do(c *dovecottest.IMAPSession, cmds ...string) {
	s.t.Helper()
	for _, cmd := range cmds {
		if _, tagged, err := c.Cmd(s.ctx, cmd); err != nil || !dovecottest.IsOK(tagged) {
			s.t.Fatalf("IMAP %s: %v %s", cmd, err, tagged)
		}
	}
}

// pairCase is one version pair and process shape a scenario runs on.
type pairCase struct {
	shape shape
	a, b  string
}

func (c pairCase) String() string { return c.a + "-" + c.b + "/" + string(c.shape) }

// config returns the system config of c for users.
func (c pairCase) config(users ...string) config {
	return config{shape: c.shape, a: c.a, b: c.b, users: users}
}

// Shorthands for the matrix tables (README.md explains the matrix).
const (
	v23 = dovecottest.V23
	v24 = dovecottest.V24
)

// eachCase runs f as a subtest per case, one after the other: the 2-core
// CI machine runs other packages' tests at the same time.
func eachCase(t *testing.T, cases []pairCase, f func(t *testing.T, c pairCase)) {
	for _, c := range cases {
		t.Run(c.String(), func(t *testing.T) {
			failures.watch(t)
			f(t, c)
		})
	}
}
