package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestLocal_ChangeRunsDsyncThroughTheEmbeddedBroker drives `dovewarden
// local` end to end with a fake doveadm: a Dovecot event posted to ingest
// goes through the embedded broker (real Trigger manifests) to the sync
// handler, which runs dsync and records the success in Redis.
func TestLocal_ChangeRunsDsyncThroughTheEmbeddedBroker(t *testing.T) {
	localChangeRunsDsync(t)
}

// TestLocal_RealRedis runs the same with a real Redis given by the
// settings of docs/configuration.md's "Redis connection": over TLS with a
// private CA and a client certificate, over a Unix socket, and found
// through a Sentinel, plain and over TLS. The status must be in that
// Redis.
func TestLocal_RealRedis(t *testing.T) {
	t.Run("tls", func(t *testing.T) {
		srv := redistest.StartWith(t, redistest.Options{TLS: true})
		localChangeRunsDsync(t, "--redis-url", srv.URL(), "--redis-ca-file", srv.TLS.CA,
			"--redis-cert-file", srv.TLS.Cert, "--redis-key-file", srv.TLS.Key)
		assertSucceededIn(t, srv)
	})
	t.Run("unix", func(t *testing.T) {
		srv := redistest.StartWith(t, redistest.Options{Unix: true})
		localChangeRunsDsync(t, "--redis-url", srv.URL())
		assertSucceededIn(t, srv)
	})
	t.Run("sentinel", func(t *testing.T) {
		primary := redistest.Start(t)
		redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
		sen := redistest.StartSentinel(t, primary, "dovewarden")
		localChangeRunsDsync(t, "--redis-url", sen.URL())
		assertSucceededIn(t, primary)
	})
	t.Run("sentinel over tls", func(t *testing.T) {
		primary := redistest.StartWith(t, redistest.Options{TLS: true})
		redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
		sen := redistest.StartSentinel(t, primary, "dovewarden")
		localChangeRunsDsync(t, "--redis-url", sen.URL(), "--redis-ca-file", sen.TLS.CA,
			"--redis-cert-file", sen.TLS.Cert, "--redis-key-file", sen.TLS.Key)
		assertSucceededIn(t, primary)
	})
}

func assertSucceededIn(t *testing.T, srv *redistest.Server) {
	t.Helper()
	v, err := srv.Client(t).HGet(context.Background(), state.UserKey("u1"), state.FieldLastSuccess).Result()
	if err != nil || v == "" {
		t.Fatalf("u1's last success in %s: %q, %v", srv.URL(), v, err)
	}
}

// startLocal runs `dovewarden local` with args added, against a fake
// doveadm server that lists users (for the sweep) and records every dsync
// in the returned tracker.
func startLocal(t *testing.T, users []string, args ...string) (base string, stop func() error, tr *doveadmtest.Tracker, stderr *safebuf.Buffer) {
	t.Helper()
	tr = doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	fake.SetUsers(users...)
	base, stop, stderr = startLocalWith(t, fake, args...)
	return base, stop, tr, stderr
}

// startLocalWith runs `dovewarden local` with args added against fake.
func startLocalWith(t *testing.T, fake *doveadmtest.Server, args ...string) (base string, stop func() error, stderr *safebuf.Buffer) {
	t.Helper()
	env, _, stderr := testEnv(map[string]string{
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "5s",
	}, "")
	base, stop = serve(t, env, stderr, append([]string{"local", "--listen", "127.0.0.1:0",
		"--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1"}, args...)...)
	return base, stop, stderr
}

// localChangeRunsDsync starts `dovewarden local` with args added, posts a
// delivery of u1 and checks that u1 and the sweep's user got their dsyncs
// and u1 its status.
func localChangeRunsDsync(t *testing.T, args ...string) {
	t.Helper()
	// The sweep at start replicates users nobody changed yet.
	base, stop, tr, stderr := startLocal(t, []string{"u1", "quiet"}, args...)

	postDovecotEvent(t, base, deliveryEvent)

	deadline := time.Now().Add(10 * time.Second)
	for (len(tr.CallsOf("u1")) == 0 || len(tr.CallsOf("quiet")) == 0) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	calls := tr.CallsOf("u1")
	if len(calls) == 0 || calls[0].Destination != "tcp:127.0.0.1:1" {
		t.Fatalf("dsync calls %+v, want some to the destination\n%s", calls, stderr)
	}
	if q := tr.CallsOf("quiet"); len(q) != 1 || !q[0].Full {
		t.Errorf("the sweep at start: dsyncs of an unchanged user %+v, want one full sync", q)
	}

	var st struct {
		User        string    `json:"user"`
		LastSuccess time.Time `json:"last_success"`
	}
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/status/u1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("status: %v: %s", err, body)
		}
		if !st.LastSuccess.IsZero() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.User != "u1" || st.LastSuccess.IsZero() {
		t.Errorf("status %+v", st)
	}
	resp, err := http.Get(base + "/status/-bad")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("hostile status name: %d", resp.StatusCode)
	}
	// Other methods than GET: 405, not ingest's 404 "post Dovecot events".
	for _, path := range []string{"/status", "/status/u1", "/healthz", "/readyz", "/metrics"} {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST %s: %d, Allow %q; want 405 allowing GET, HEAD", path, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}

	if err := stop(); err != nil {
		t.Fatalf("local returned %v", err)
	}
	if tr.Overlaps() != 0 {
		t.Error("overlapping dsyncs")
	}
}

// TestLocal_RefusesARedisClusterNode: the decision scripts cannot run on
// Redis Cluster, so a cluster node is refused at start, naming the
// setting, rather than failing every decision.
func TestLocal_RefusesARedisClusterNode(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{Cluster: true})
	env, _, _ := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password}, "")
	err := run(context.Background(), env, []string{"local", "--listen", "127.0.0.1:0", "--redis-url", srv.URL(),
		"--doveadm-url", "http://127.0.0.1:1/doveadm/v1", "--destination", "tcp:127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "redis-url") || !strings.Contains(err.Error(), "Redis Cluster") {
		t.Fatalf("local with a cluster node: %v, want a refusal naming redis-url and Redis Cluster", err)
	}
}

// shippedBroker reads config/broker's Trigger and Broker manifests.
func shippedBroker(t *testing.T) (triggers, brokerYAML []byte) {
	t.Helper()
	var err error
	if triggers, err = os.ReadFile("../../config/broker/triggers.yaml"); err != nil {
		t.Fatal(err)
	}
	if brokerYAML, err = os.ReadFile("../../config/broker/broker.yaml"); err != nil {
		t.Fatal(err)
	}
	return triggers, brokerYAML
}

// TestLocal_RefusesTriggersThatRouteNoChangeToSync: a --triggers folder
// whose Triggers send some change nowhere (the Broker manifest left out,
// so every Trigger is another Broker's; or the low lane missing) is
// refused at start, naming the setting: such changes would be accepted
// and dropped.
func TestLocal_RefusesTriggersThatRouteNoChangeToSync(t *testing.T) {
	triggers, brokerYAML := shippedBroker(t)
	noLow := strings.Replace(string(triggers), "name: dovewarden-sync-low", "name: somewhere-else", 1)
	for name, files := range map[string]map[string]string{
		"no Broker manifest": {"triggers.yaml": string(triggers)},
		"no low lane":        {"broker.yaml": string(brokerYAML), "triggers.yaml": noLow},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for f, body := range files {
				if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			env, _, _ := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password}, "")
			// A start that is not refused serves until this ends.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := run(ctx, env, []string{"local", "--listen", "127.0.0.1:0", "--triggers", dir,
				"--doveadm-url", "http://127.0.0.1:1/doveadm/v1", "--destination", "tcp:127.0.0.1:1"})
			if err == nil || !strings.Contains(err.Error(), "triggers:") || !strings.Contains(err.Error(), "mailbox.changed") {
				t.Fatalf("local: %v, want a refusal naming --triggers", err)
			}
		})
	}
}

// TestLocal_RefusesADeliveryTimeoutBelowTheRequestTimeout: a lane to the
// sync function whose attempts end before the sync function's own bound
// (--delivery-timeout, or a Trigger's delivery.timeout, not above
// --request-timeout) is refused at start, naming the setting: it would
// cut off dsyncs still within their bound, and retry them to be cut off
// again.
func TestLocal_RefusesADeliveryTimeoutBelowTheRequestTimeout(t *testing.T) {
	triggers, brokerYAML := shippedBroker(t)
	short := strings.Replace(string(triggers), "    retry: 13\n", "    retry: 13\n    timeout: PT1M\n", 1)
	if short == string(triggers) {
		t.Fatal("the sync-high Trigger's retry line moved: update the test")
	}
	for name, tc := range map[string]struct {
		triggers string
		args     []string
		want     string
	}{
		"raised request-timeout": {string(triggers), []string{"--write-timeout", "10m", "--request-timeout", "9m"}, "delivery-timeout 5m0s"},
		"Trigger's timeout":      {short, nil, "delivery.timeout 1m0s"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for f, body := range map[string]string{"broker.yaml": string(brokerYAML), "triggers.yaml": tc.triggers} {
				if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			env, _, _ := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password}, "")
			// A start that is not refused serves until this ends.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := run(ctx, env, append([]string{"local", "--listen", "127.0.0.1:0", "--triggers", dir,
				"--doveadm-url", "http://127.0.0.1:1/doveadm/v1", "--destination", "tcp:127.0.0.1:1"}, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "request-timeout") {
				t.Fatalf("local: %v, want a refusal naming %q", err, tc.want)
			}
		})
	}
}

// TestLocal_ASweepOfMoreStepsThanTheBrokersTTL: every continuation that
// goes back as a step's reply costs one of the broker's knativebrokerttl
// (255), as on a cluster; a sweep of 300 steps used to stop at the 254th.
func TestLocal_ASweepOfMoreStepsThanTheBrokersTTL(t *testing.T) {
	users := make([]string, 300)
	for i := range users {
		users[i] = fmt.Sprintf("u%03d", i)
	}
	_, stop, tr, stderr := startLocal(t, users, "--sweep-batch-size", "1", "--sweep-batch-interval", "0")
	defer stop()
	deadline := time.Now().Add(60 * time.Second)
	for len(tr.Calls()) < len(users) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(tr.Calls()); n < len(users) {
		t.Fatalf("the sweep at start requested %d of %d users\n%s", n, len(users), stderr)
	}
}

// TestLocal_QueuedChangesMarkedPendingAtShutdown: the embedded broker
// keeps nothing across restarts, so with a Redis that outlives the process
// the changes still queued at shutdown become pending marks, with the
// change's time and host, as ingest leaves for a change the broker
// refuses (TestLocal_RestartLosesNoAcceptedChange: the next start
// replicates them).
//
// With --spool-file the events are not dropped but saved to it, and the
// log says so rather than calling them dropped.
func TestLocal_QueuedChangesMarkedPendingAtShutdown(t *testing.T) {
	t.Run("without spool file", func(t *testing.T) { queuedChangesMarkedPendingAtShutdown(t, false) })
	t.Run("with spool file", func(t *testing.T) { queuedChangesMarkedPendingAtShutdown(t, true) })
}

func queuedChangesMarkedPendingAtShutdown(t *testing.T, spool bool) {
	srv := redistest.Start(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	started, free := holdU1(t, fake)
	// One worker a lane: u1's dsync holds the new-mail lane, u2 and u3
	// wait in its queue.
	args := []string{"--redis-url", srv.URL(), "--workers", "1"}
	if spool {
		args = append(args, "--spool-file", filepath.Join(t.TempDir(), "spool"))
	}
	base, stop, stderr := startLocalWith(t, fake, args...)
	postBehindU1(t, base, started, stderr, "u2", "u3")
	go func() {
		// u1's dsync ends during the shutdown, within its timeout.
		time.Sleep(200 * time.Millisecond)
		free()
	}()
	if err := stop(); err != nil {
		t.Fatalf("local returned %v\n%s", err, stderr)
	}
	rdb := srv.Client(t)
	ctx := context.Background()
	for _, user := range []string{"u2", "u3"} {
		at, err := rdb.ZScore(ctx, state.PendingKey, user).Result()
		if err != nil {
			t.Errorf("%s's queued change left no pending mark: %v\n%s", user, err, stderr)
			continue
		}
		if want := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC).UnixMilli(); int64(at) != want {
			t.Errorf("%s's pending mark at %d, want the change's time %d", user, int64(at), want)
		}
		if host, _ := rdb.HGet(ctx, state.UserKey(user), state.FieldPendingHost).Result(); host != "mail-a.test" {
			t.Errorf("%s's pending host %q, want mail-a.test", user, host)
		}
	}
	if n, _ := rdb.ZCard(ctx, state.PendingKey).Result(); n != 2 {
		t.Errorf("%d users pending, want u2 and u3 (u1's dsync finished)", n)
	}
	if !strings.Contains(stderr.String(), "marked pending") {
		t.Errorf("no log of the marks:\n%s", stderr)
	}
	if spool {
		if strings.Contains(stderr.String(), "queued events dropped") || !strings.Contains(stderr.String(), "to be saved to the spool file; their users are also marked pending") ||
			!strings.Contains(stderr.String(), "saved to the spool file") {
			t.Errorf("with a spool file, the log calls the events dropped or does not say they are saved:\n%s", stderr)
		}
	} else if !strings.Contains(stderr.String(), "queued events dropped at shutdown; their users are marked pending") {
		t.Errorf("without a spool file, the log does not say the events are dropped:\n%s", stderr)
	}
}

// holdU1 makes fake hold each dsync of u1 until free is called (the
// test's cleanup calls it too); started gets u1 when one begins.
func holdU1(t *testing.T, fake *doveadmtest.Server) (started <-chan string, free func()) {
	ch, release := make(chan string, 10), make(chan struct{})
	fake.OnStart = func(c doveadmtest.Call) {
		if c.User == "u1" {
			ch <- c.User
			<-release
		}
	}
	var once sync.Once
	free = func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	return ch, free
}

// postBehindU1 posts a delivery of u1, waits until its dsync holds the
// new-mail lane (holdU1), and posts one of each other user behind it.
func postBehindU1(t *testing.T, base string, started <-chan string, stderr fmt.Stringer, others ...string) {
	t.Helper()
	postDovecotEvent(t, base, deliveryEvent)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatalf("no dsync of u1\n%s", stderr)
	}
	for _, user := range others {
		postDovecotEvent(t, base, strings.Replace(deliveryEvent, `"user":"u1"`, `"user":"`+user+`"`, 1))
	}
}

// postDovecotEvent posts an exporter event to ingest and expects 202.
func postDovecotEvent(t *testing.T, base, body string) {
	t.Helper()
	resp, err := http.Post(base+"/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /events: %d", resp.StatusCode)
	}
}

// TestLocal_RestartLosesNoAcceptedChange: with a Redis that outlives the
// process, every change ingest accepted (202) is replicated by a dsync
// that started after it, even when the process stops with changes still
// queued and starts again. The users were replicated before those
// changes; the sweep at the next start takes the ones the stop marked
// pending first, then every other user whose last dsync started before
// the start, the quiet ones too: Dovecot dropped the events of changes
// made while no process listened. A clean stop leaves no lock behind.
func TestLocal_RestartLosesNoAcceptedChange(t *testing.T) {
	srv := redistest.Start(t)
	fake, tr, delay, users, listed := slowableFake(t)
	args := []string{"--redis-url", srv.URL(), "--workers", "1"}
	base, stop, stderr := startLocalWith(t, fake, args...)

	accepted := fillTheLanes(t, base, users, tr, delay)
	if err := stop(); err != nil {
		t.Fatalf("local returned %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr.String(), "marked pending") {
		t.Fatalf("no change was queued at shutdown, so the test tested nothing:\n%s", stderr)
	}

	delay.Store(0)
	restart := time.Now()
	_, stop2, stderr2 := startLocalWith(t, fake, args...)
	if missing := awaitReplicatedAfter(tr, accepted, 20*time.Second); len(missing) > 0 {
		t.Fatalf("after the restart, %d of %d users have an accepted change no dsync started after: %v\nfirst run:\n%s\nsecond run:\n%s",
			len(missing), len(accepted), missing, stderr, stderr2)
	}
	awaitEveryUserReplicatedAfter(t, tr, listed, restart, stderr2)
	if strings.Contains(stderr2.String(), "locks are held") {
		t.Errorf("the stop left users' locks in Redis:\n%s", stderr2)
	}
	if err := stop2(); err != nil {
		t.Fatalf("second run returned %v\n%s", err, stderr2)
	}
}

// TestLocal_CrashLosesNoAcceptedChange: the same when the process is
// killed (SIGKILL) with changes queued, so that nothing of its shutdown
// runs, and a dsync of each lane is cut short (its user's lock outlives
// the process). The next start's sweeps replicate every user, also those
// with no accepted change: Dovecot dropped the events of changes made
// while no process listened.
func TestLocal_CrashLosesNoAcceptedChange(t *testing.T) {
	srv := redistest.Start(t)
	fake, tr, delay, users, listed := slowableFake(t)
	addr := freePort(t)
	base := "http://" + addr
	env := []string{"DOVEWARDEN_DOVEADM_PASSWORD=" + doveadmtest.Password, "DOVEWARDEN_SHUTDOWN_TIMEOUT=5s"}
	args := []string{"local", "--listen", addr, "--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1",
		"--redis-url", srv.URL(), "--workers", "1", "--lock-ttl", "2s"}

	first := startChild(t, base, env, args...)
	accepted := fillTheLanes(t, base, users, tr, delay)
	first.kill(t)
	if missing := awaitReplicatedAfter(tr, accepted, 0); len(missing) == 0 {
		t.Fatalf("every accepted change was replicated before the kill, so the test tested nothing:\n%s", first.stderr)
	}

	delay.Store(0)
	restart := time.Now()
	second := startChild(t, base, env, args...)
	if missing := awaitReplicatedAfter(tr, accepted, 20*time.Second); len(missing) > 0 {
		t.Fatalf("after the crash and a restart, %d of %d users have an accepted change no dsync started after: %v\nfirst run:\n%s\nsecond run:\n%s",
			len(missing), len(accepted), missing, first.stderr, second.stderr)
	}
	awaitEveryUserReplicatedAfter(t, tr, listed, restart, second.stderr)
	second.stop(t)
}

// slowableFake is a fake doveadm whose dsyncs take *delay each. It lists
// 50 users that change (users) and 5 that never do (listed has all 55).
func slowableFake(t *testing.T) (fake *doveadmtest.Server, tr *doveadmtest.Tracker, delay *atomic.Int64, users, listed []string) {
	tr = doveadmtest.NewTracker(t)
	fake = doveadmtest.NewServer(t, "mail-a.test", tr)
	delay = new(atomic.Int64)
	fake.Respond = func(doveadmtest.Call) doveadmtest.Reply {
		return doveadmtest.Reply{Delay: time.Duration(delay.Load())}
	}
	users = make([]string, 50)
	for i := range users {
		users[i] = "u" + strconv.Itoa(i)
	}
	listed = append([]string{"quiet0", "quiet1", "quiet2", "quiet3", "quiet4"}, users...)
	fake.SetUsers(listed...)
	return fake, tr, delay, users, listed
}

// fillTheLanes posts changes of users from 8 connections until every user
// has been replicated twice, then makes each dsync take a second and posts
// on for 200 ms, so that changes wait in the lanes. It returns the time of
// each user's newest accepted change.
func fillTheLanes(t *testing.T, base string, users []string, tr *doveadmtest.Tracker, delay *atomic.Int64) map[string]time.Time {
	t.Helper()
	var mu sync.Mutex
	accepted := map[string]time.Time{}
	var posters sync.WaitGroup
	quit := make(chan struct{})
	for w := range 8 {
		posters.Go(func() {
			for i := w; ; i += 8 {
				select {
				case <-quit:
					return
				default:
				}
				user, at := users[i%len(users)], time.Now().UTC()
				body := strings.NewReplacer(`"user":"u1"`, `"user":"`+user+`"`,
					`"end_time":"2026-11-29T10:00:00.000001Z"`, `"end_time":"`+at.Format(time.RFC3339Nano)+`"`).Replace(deliveryEvent)
				resp, err := http.Post(base+"/events", "application/json", strings.NewReader(body))
				if err != nil {
					t.Errorf("POST /events: %v", err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					mu.Lock()
					if at.After(accepted[user]) {
						accepted[user] = at
					}
					mu.Unlock()
				}
			}
		})
	}
	// Fast dsyncs first, so every user has been replicated (the quiet
	// ones by the sweep at start); then slow ones, so the changes that
	// follow wait in the lane.
	deadline := time.Now().Add(10 * time.Second)
	for len(tr.Calls()) < 2*len(users) || len(tr.CallsOf("quiet4")) == 0 {
		if time.Now().After(deadline) {
			close(quit)
			posters.Wait()
			t.Fatalf("the fast dsyncs before the lanes fill: %d of %d, quiet4's %d", len(tr.Calls()), 2*len(users), len(tr.CallsOf("quiet4")))
		}
		time.Sleep(10 * time.Millisecond)
	}
	delay.Store(int64(time.Second))
	time.Sleep(200 * time.Millisecond)
	close(quit)
	posters.Wait()
	return accepted
}

// awaitEveryUserReplicatedAfter expects a dsync of every user that started
// after restart: Dovecot dropped the events of changes made while no
// process listened, so the start must replicate every user.
func awaitEveryUserReplicatedAfter(t *testing.T, tr *doveadmtest.Tracker, users []string, restart time.Time, stderr fmt.Stringer) {
	t.Helper()
	all := map[string]time.Time{}
	for _, u := range users {
		all[u] = restart
	}
	if missing := awaitReplicatedAfter(tr, all, 10*time.Second); len(missing) > 0 {
		t.Errorf("%d of %d users had no dsync after the restart (a change made while the process was down would wait for the full sync): %v\n%s",
			len(missing), len(users), missing, stderr)
	}
}

// awaitReplicatedAfter waits up to limit until each user of accepted has a
// successful dsync that started after the time given, and returns the
// users that still have none.
func awaitReplicatedAfter(tr *doveadmtest.Tracker, accepted map[string]time.Time, limit time.Duration) []string {
	replicated := func(user string, after time.Time) bool {
		for _, c := range tr.CallsOf(user) {
			if c.Start.After(after) && c.Reply.ExitCode == 0 && c.Reply.ErrorType == "" && !c.End.IsZero() {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(limit)
	for {
		var missing []string
		for user, at := range accepted {
			if !replicated(user, at) {
				missing = append(missing, user)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLocal_Overview: GET /status sums up the installation as `doveadm
// replicator status` did: users pending, failed and excluded, the sweep,
// and what each lane holds, here while a dsync of the new-mail lane hangs
// and another user waits behind it.
func TestLocal_Overview(t *testing.T) {
	srv := redistest.Start(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	started, free := holdU1(t, fake)
	// A user that failed just now (the sweep at start leaves it for the
	// retry interval) and two excluded ones; the fake lists no user, so
	// that the sweep at start runs no dsync.
	rdb := srv.Client(t)
	ctx := context.Background()
	rdb.ZAdd(ctx, state.FailedKey, redis.Z{Score: float64(time.Now().UnixMilli()), Member: "gone"})
	rdb.SAdd(ctx, state.ExcludedKey, "x1", "x2")
	base, stop, stderr := startLocalWith(t, fake, "--redis-url", srv.URL(), "--workers", "1")
	postBehindU1(t, base, started, stderr, "u2")
	var o struct {
		Users struct {
			Pending, Failed, Excluded int
			Recovery                  time.Time
		}
		Sweep struct {
			ID string
		}
		Lanes []struct {
			Trigger    string
			Enabled    bool
			Subscriber string
			Workers    int
			QueueSize  int   `json:"queue_size"`
			Queued     int64 `json:"queued"`
			InFlight   int64 `json:"in_flight"`
		}
	}
	// The sweep at start records itself when its lane's worker takes
	// it, which may come after u2 was queued.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(base + "/status")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&o)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /status: %d %v", resp.StatusCode, err)
		}
		if o.Sweep.ID != "" || time.Now().After(deadline) {
			break
		}
	}
	// u1's change is pending in Redis while its dsync runs; u2's waits
	// in the lane (below).
	if o.Users.Pending != 1 || o.Users.Failed != 1 || o.Users.Excluded != 2 || o.Users.Recovery.IsZero() {
		t.Errorf("users %+v, want 1 pending, 1 failed, 2 excluded and the start's recovery time", o.Users)
	}
	if o.Sweep.ID == "" {
		t.Errorf("no sweep in the status, though one ran at start")
	}
	lanes := map[string]int{}
	for i, l := range o.Lanes {
		lanes[l.Trigger] = i
	}
	high, ok := lanes["sync-high"]
	if !ok || len(o.Lanes) < 3 {
		t.Fatalf("lanes %+v, want the shipped Triggers'", o.Lanes)
	}
	if l := o.Lanes[high]; !l.Enabled || l.Workers != 1 || l.QueueSize == 0 || l.InFlight != 1 || l.Queued != 1 || l.Subscriber == "" {
		t.Errorf("the new-mail lane %+v, want one delivery running and one queued", l)
	}
	free()
	if err := stop(); err != nil {
		t.Fatalf("local returned %v\n%s", err, stderr)
	}
}

// TestLocal_SpoolFileCarriesAnAlertOverARestart: an alert webhook is down
// when a dsync fails, and dovewarden local is restarted while the
// replication.failed event waits for its retry. With --spool-file, the
// next start delivers that very event to the webhook once it is back.
func TestLocal_SpoolFileCarriesAnAlertOverARestart(t *testing.T) {
	var up atomic.Bool
	alerts := make(chan string, 100)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Header.Get("Ce-Type") != "org.dovewarden.replication.failed" {
			t.Errorf("webhook got %s", r.Header.Get("Ce-Type"))
		}
		if !up.Load() {
			alerts <- "down " + r.Header.Get("Ce-Id")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		alerts <- r.Header.Get("Ce-Id")
	}))
	defer hook.Close()
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	fake.SetUsers("broken")
	fake.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{ExitCode: 2} }
	spool := filepath.Join(t.TempDir(), "local.spool")
	args := []string{"--spool-file", spool, "--subscriber", "dovewarden-alerts=" + hook.URL}

	// The sweep at start replicates "broken", whose dsync fails.
	_, stop, stderr := startLocalWith(t, fake, args...)
	var missed string
	select {
	case a := <-alerts:
		missed = strings.TrimPrefix(a, "down ")
	case <-time.After(10 * time.Second):
		t.Fatalf("no alert\n%s", stderr)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(spool); err != nil {
		t.Fatalf("no spool file: %v\n%s", err, stderr)
	}

	up.Store(true)
	_, _, stderr2 := startLocalWith(t, fake, args...)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case a := <-alerts:
			if a == missed {
				return
			}
		case <-deadline:
			t.Fatalf("alert %s never delivered after the restart\n%s", missed, stderr2)
		}
	}
}

// TestLocal_ChangesOfTheLastRoundAreNotLeftToTheSweep: a change arrives
// during each of u1's dsyncs until --max-rounds stops the owner, and then
// no more come (the end of a burst of mail). The last change must still
// get a dsync that starts after it, at once, not at the next sweep: the
// owner hands u1 back to the Broker.
func TestLocal_ChangesOfTheLastRoundAreNotLeftToTheSweep(t *testing.T) {
	const rounds = 2
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	fake.SetUsers() // the sweep at start has no one to replicate
	started := make(chan struct{}, 10)
	release, free := make(chan struct{}, 10), make(chan struct{})
	fake.OnStart = func(doveadmtest.Call) {
		started <- struct{}{}
		select {
		case <-release:
		case <-free:
		}
	}
	base, _, stderr := startLocalWith(t, fake, "--max-rounds", strconv.Itoa(rounds), "--sweep-every", "0")
	t.Cleanup(func() { close(free) }) // before the stop: no dsync stays held
	postDovecotEvent(t, base, deliveryEvent)
	var last time.Time
	for i := range rounds {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatalf("no dsync of u1\n%s", stderr)
		}
		// A change during this round, merged into it: it asks for one
		// more.
		last = time.Now()
		postDovecotEvent(t, base, deliveryEvent)
		if m, ok := awaitMetric(t, base, fmt.Sprintf(`dovewarden_sync_coalesced_changes_total{how="merged"} %d`, i+1)); !ok {
			t.Fatalf("change %d not merged into the running dsync:\n%s", i+1, m)
		}
		release <- struct{}{}
	}
	select {
	case <-started:
		release <- struct{}{}
	case <-time.After(10 * time.Second):
		t.Fatalf("the change posted during the last round got no dsync\n%s", stderr)
	}
	calls := fake.Tracker.CallsOf("u1") // recorded when they end
	for deadline := time.Now().Add(5 * time.Second); len(calls) < rounds+1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		calls = fake.Tracker.CallsOf("u1")
	}
	if len(calls) < rounds+1 || !calls[len(calls)-1].Start.After(last) {
		t.Errorf("dsyncs of u1 %+v: want %d, the last started after %v", calls, rounds+1, last)
	}
	if !strings.Contains(stderr.String(), "asked for again through the Broker") {
		t.Errorf("the log does not say u1 was asked for again:\n%s", stderr)
	}
}

// TestLocal_RefusesANegativeSweepInterval: a negative --sweep-every (or
// DOVEWARDEN_SWEEP_EVERY) stops the start naming the setting, rather
// than meaning "only at start" as 0 does; so does one under a minute,
// which asked for sweeps as fast as the loop ran (1ns: 1.2 cores and
// some 60,000 log lines a second).
func TestLocal_RefusesANegativeSweepInterval(t *testing.T) {
	for name, tc := range map[string]struct {
		vars map[string]string
		args []string
		says string
	}{
		"flag":             {nil, []string{"--sweep-every", "-1h"}, "negative"},
		"environment":      {map[string]string{"DOVEWARDEN_SWEEP_EVERY": "-5m"}, nil, "negative"},
		"a nanosecond":     {nil, []string{"--sweep-every", "1ns"}, "at least 1m"},
		"under one minute": {map[string]string{"DOVEWARDEN_SWEEP_EVERY": "59s"}, nil, "at least 1m"},
	} {
		t.Run(name, func(t *testing.T) {
			vars := map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": "x"}
			for k, v := range tc.vars {
				vars[k] = v
			}
			env, _, _ := testEnv(vars, "")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := run(ctx, env, append([]string{"local", "--listen", "127.0.0.1:0",
				"--doveadm-url", "http://127.0.0.1:1", "--destination", "tcp:127.0.0.1:1"}, tc.args...))
			if err == nil || !strings.Contains(err.Error(), "sweep-every ") || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("%v, want an error naming sweep-every that says %q", err, tc.says)
			}
		})
	}
}

// K_CA_CERTS belongs to a Knative Broker's https address; local mode
// sends only to itself, so a value it would refuse does not stop it.
func TestLocal_IgnoresKnativeCACerts(t *testing.T) {
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	env, _, stderr := testEnv(map[string]string{
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"K_CA_CERTS":                  "not a certificate",
	}, "")
	base, stop := serve(t, env, stderr, "local", "--listen", "127.0.0.1:0",
		"--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1")
	defer stop()
	resp, err := http.Get(base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /status: %d", resp.StatusCode)
	}
}

// TestLocal_BrokerIngressTakesMaxBody: the broker's ingress shares the
// listener Dovecot posts to, and --max-body bounds it too.
func TestLocal_BrokerIngressTakesMaxBody(t *testing.T) {
	base, _, _, stderr := startLocal(t, nil, "--max-body", "2048")
	post := func(data string) int {
		body := `{"specversion":"1.0","id":"big-1","source":"test","type":"com.example.other","data":"` + data + `"}`
		resp, err := http.Post(base+"/local/dovewarden", "application/cloudevents+json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("small"); code != http.StatusAccepted {
		t.Fatalf("a small event: HTTP %d\n%s", code, stderr)
	}
	if code := post(strings.Repeat("x", 4096)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("an event over --max-body: HTTP %d, want 413", code)
	}
}

// TestLocal_FailedUserRetriedAfterTheInterval: a user whose replication
// failed (its replica down) is tried again --failed-retry-interval after
// the failure, with no change of its own and long before the next
// scheduled sweep, as Dovecot 2.3's replicator retried failed users.
func TestLocal_FailedUserRetriedAfterTheInterval(t *testing.T) {
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	fake.SetUsers("u1")
	var down atomic.Bool
	down.Store(true)
	fake.Respond = func(doveadmtest.Call) doveadmtest.Reply {
		if down.Load() {
			return doveadmtest.Reply{ExitCode: 75}
		}
		return doveadmtest.Reply{}
	}
	base, stop, stderr := startLocalWith(t, fake, "--failed-retry-interval", "2s", "--max-attempts", "1", "--sweep-every", "1h")
	t.Cleanup(func() { _ = stop() })
	failed := func() bool {
		resp, err := http.Get(base + "/status/u1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st struct {
			Failed bool `json:"failed"`
		}
		json.NewDecoder(resp.Body).Decode(&st)
		return st.Failed
	}
	// The sweep at start asks for u1, whose dsync fails.
	for deadline := time.Now().Add(10 * time.Second); !failed(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("u1 never failed:\n%s", stderr)
		}
	}
	down.Store(false) // the replica is back
	tried := len(tr.CallsOf("u1"))
	for deadline := time.Now().Add(10 * time.Second); failed(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("u1 still failed 10 s after the replica came back (%d dsyncs, %d before):\n%s", len(tr.CallsOf("u1")), tried, stderr)
		}
	}
	if !strings.Contains(stderr.String(), "reason=retry") {
		t.Errorf("the retry was not a sweep of reason retry:\n%s", stderr)
	}
}

// TestLocal_WithoutADoveadmURLSaysSo: a first `dovewarden local` without
// --doveadm-url is told that the doveadm URL is missing and what one
// looks like, not that a URL it never gave ("local doveadm", the name
// of the exec transport's doveadm) is not http.
func TestLocal_WithoutADoveadmURLSaysSo(t *testing.T) {
	env, _, _ := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": "x"}, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := run(ctx, env, []string{"local", "--listen", "127.0.0.1:0", "--destination", "tcp:127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "doveadm-url") || !strings.Contains(err.Error(), "default host: no doveadm url (e.g. http://") ||
		strings.Contains(err.Error(), "local doveadm") {
		t.Fatalf("%v, want an error saying the default host has no doveadm url", err)
	}
}

// TestLocal_SpoolFileKeepsAnAlertOfAnAttemptDuringTheStop: a dsync fails
// while dovewarden local stops, and is retried within the stop. The
// replication.failed of that attempt, which the sync function sends of its
// own accord (the last attempt's is its reply), is kept in the spool file
// with what the lanes held, and the next start delivers both to the alert
// webhook. Sent to local's own listener, the first was refused there: the
// listener had closed.
func TestLocal_SpoolFileKeepsAnAlertOfAnAttemptDuringTheStop(t *testing.T) {
	alerts := make(chan string, 100)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var data struct {
			Attempt int `json:"attempt"`
		}
		_ = json.NewDecoder(r.Body).Decode(&data)
		alerts <- fmt.Sprintf("%s %s attempt %d", r.Header.Get("Ce-Type"), r.Header.Get("Ce-Subject"), data.Attempt)
	}))
	defer hook.Close()
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	fake.SetUsers() // the sweep at start has no one to replicate
	started, free := holdU1(t, fake)
	fake.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{ExitCode: 75} }
	spool := filepath.Join(t.TempDir(), "local.spool")
	args := []string{"--spool-file", spool, "--subscriber", "dovewarden-alerts=" + hook.URL, "--max-attempts", "2"}
	base, stop, stderr := startLocalWith(t, fake, args...)
	postDovecotEvent(t, base, deliveryEvent)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatalf("no dsync of u1\n%s", stderr)
	}
	go func() {
		time.Sleep(300 * time.Millisecond) // the stop has begun
		free()
	}()
	if err := stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, stderr)
	}
	select {
	case a := <-alerts:
		t.Fatalf("an alert was delivered during the stop (%s): the test shows nothing", a)
	default:
	}
	if b, _ := os.ReadFile(spool); !strings.Contains(string(b), "org.dovewarden.replication.failed") {
		t.Fatalf("no replication.failed in the spool file\n%s", stderr)
	}
	_, _, stderr2 := startLocalWith(t, fake, args...)
	var got []string
	for len(got) < 2 {
		select {
		case a := <-alerts:
			got = append(got, a)
		case <-time.After(10 * time.Second):
			t.Fatalf("alerts after the restart: %q, want both attempts'\n%s", got, stderr2)
		}
	}
	slices.Sort(got)
	if want := []string{"org.dovewarden.replication.failed u1 attempt 1", "org.dovewarden.replication.failed u1 attempt 2"}; !slices.Equal(got, want) {
		t.Errorf("alerts after the restart: %q, want %q", got, want)
	}
}

// TestLocal_WarnsOnceOfATriggerForAnotherBroker: what loading the
// manifests warns of (a Trigger of another Broker, skipped) is logged
// once, by the broker as it starts.
func TestLocal_WarnsOnceOfATriggerForAnotherBroker(t *testing.T) {
	triggers, brokerYAML := shippedBroker(t)
	dir := t.TempDir()
	for f, body := range map[string]string{
		"broker.yaml":   string(brokerYAML),
		"triggers.yaml": string(triggers),
		"other.yaml":    "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: other\nspec:\n  broker: elsewhere\n  subscriber:\n    uri: http://127.0.0.1:1/\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, stop, _, stderr := startLocal(t, nil, "--triggers", dir)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(stderr.String(), "Trigger other is for Broker"); n != 1 {
		t.Errorf("the warning of Trigger other is logged %d times, want once\n%s", n, stderr)
	}
}
