package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// fullSyncInterval is the test's replication_full_sync_interval
// (--full-sync-interval): short, so that a sweep right after the outage
// finds the users due.
const fullSyncInterval = 3 * time.Second

// TestIngestDown is scenario 6: ingest is unreachable for a while, so
// Dovecot's exporter drops the events of the changes made meanwhile (it
// never retries) and nothing marks those users. The periodic sweep, as
// Dovecot 2.3's replicator did with replication_full_sync_interval, asks
// for a full sync of every user whose last full sync is older than the
// interval, and brings the missed users back in sync.
func TestIngestDown(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v24, v24}, {shapeSplit, v24, v23}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2", "u3"}
		cfg := c.config(users...)
		cfg.syncFlags = []string{"--full-sync-interval", fullSyncInterval.String(), "--sweep-batch-interval", "0s"}
		s := newSystem(t, cfg)

		// A first sweep gives every user a full sync, so that the sweep after
		// the outage picks them by the interval, not because dovewarden never
		// synced them.
		s.requestSweep()
		if err := poll(s.ctx, convergeLimit, 100*time.Millisecond, func() error { return s.fullSyncsDone(users) }); err != nil {
			t.Fatal(err)
		}
		sweepStart := time.Now()

		s.ingest.stop()
		for _, u := range users[:2] {
			s.appendN(s.a, u, "missed", 3)
			s.do(s.imap(s.a, u), "CREATE Missed", "SELECT INBOX", `STORE 1 +FLAGS ($Missed)`)
		}
		// Nothing can have replicated these changes: ingest is down.
		for _, u := range users[:2] {
			if a, b := s.snapshots(u); a.equal(b) {
				t.Fatalf("%s equal on both servers while ingest was down: the scenario tests nothing", u)
			}
		}
		s.ingest.start()
		s.ingest.waitHTTP(s.ingestBase+"/readyz", 20*time.Second)

		if wait := fullSyncInterval - time.Since(sweepStart); wait > 0 {
			time.Sleep(wait)
		}
		s.requestSweep()
		for u, snap := range s.awaitConverged(users...) {
			if u == "u3" {
				continue
			}
			wantMessages(t, snap, "missed", 3)
			if !snap.has(`mailbox "Missed"`) || !snap.has("<seed.", "$Missed") {
				t.Errorf("%s lacks a change made while ingest was down:\n%s", u, snap)
			}
		}
	})
}

// fullSyncsDone reports whether every user had a full sync, by the
// succeeded events the audit subscriber got.
func (s *system) fullSyncsDone(users []string) error {
	full := map[string]bool{}
	for _, r := range s.events.results("org.dovewarden.replication.succeeded") {
		if r.Mode == "full" {
			full[r.User] = true
		}
	}
	for _, u := range users {
		if !full[u] {
			return errNotYet("full sync of " + u)
		}
	}
	return nil
}

// TestLocalRestarted: `dovewarden local` with a Redis that outlives it is
// stopped (SIGTERM) after both users were replicated, and changes are
// made on A while it is down: Dovecot's exporter drops their events. No
// sweep is asked for from outside and the full sync is a day away, so
// only the restart's own sweep, which replicates every user whose last
// dsync started before the start, can bring them to B.
func TestLocalRestarted(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v23, v24}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2"}
		cfg := c.config(users...)
		cfg.realRedis = true
		s := newSystem(t, cfg)
		// The sweep at the first start gives both users their first,
		// full sync.
		if err := poll(s.ctx, convergeLimit, 100*time.Millisecond, func() error { return s.fullSyncsDone(users) }); err != nil {
			t.Fatal(err)
		}

		s.local.stop()
		for _, u := range users {
			s.appendN(s.a, u, "while-down", 2)
		}
		for _, u := range users {
			if a, b := s.snapshots(u); a.equal(b) {
				t.Fatalf("%s equal on both servers while dovewarden was down: the scenario tests nothing", u)
			}
		}
		s.local.start()
		s.local.waitHTTP(s.ingestBase+"/readyz", 20*time.Second)
		for _, snap := range s.awaitConverged(users...) {
			wantMessages(t, snap, "while-down", 2)
		}
	})
}

// TestBrokerRestarted: the split shape's broker is restarted (SIGTERM)
// while its sync lanes hold changes that the sync process, down, could not
// take. No sweep is asked for and the full sync is a day away, so only the
// broker's --spool-file, which the stop writes and the next start
// delivers, can bring those changes to B.
func TestBrokerRestarted(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v23, v24}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2"}
		cfg := c.config(users...)
		cfg.realRedis = true
		s := newSystem(t, cfg)

		s.sync.stop()
		for _, u := range users {
			s.appendN(s.a, u, "queued", 2)
		}
		// The broker has the changes and fails to deliver them (its
		// debug log names each attempt's subject).
		err := poll(s.ctx, convergeLimit, 50*time.Millisecond, func() error {
			log, _ := os.ReadFile(s.broker.log)
			for _, u := range users {
				if !strings.Contains(string(log), `msg="delivery failed"`) || !strings.Contains(string(log), "subject="+u+" ") {
					return errNotYet("a failed delivery of " + u)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		s.broker.stop()
		spool := filepath.Join(s.dir, "broker.spool")
		if _, err := os.Stat(spool); err != nil {
			t.Fatalf("the broker's stop saved nothing: %v", err)
		}
		for _, u := range users {
			if a, b := s.snapshots(u); a.equal(b) {
				t.Fatalf("%s equal on both servers with sync down: the scenario tests nothing", u)
			}
		}

		s.sync.start()
		s.sync.waitHTTP(s.syncBase+"/readyz", 20*time.Second)
		s.broker.start()
		s.broker.waitHTTP(strings.TrimSuffix(s.brokerURL, "/")+"/readyz", 20*time.Second)
		for _, snap := range s.awaitConverged(users...) {
			wantMessages(t, snap, "queued", 2)
		}
		if _, err := os.Stat(spool); !os.IsNotExist(err) {
			t.Errorf("spool file left after the start: %v", err)
		}
	})
}

// TestSweepAll: a change is lost without any mark in Redis (ingest is down
// when Dovecot's exporter posts its event, and the exporter never
// retries), for a user dovewarden replicated moments before: neither
// pending, failed nor due for its full sync (a day away). A plain
// `dovewarden sweep` finds nothing to do, and the message stays on A
// alone; `dovewarden sweep --all` raises the recovery time to its request
// and has the sweep request every user replicated before it (reason
// recovery), which brings the message to B.
func TestSweepAll(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v24, v24}, {shapeSplit, v23, v23}}, func(t *testing.T, c pairCase) {
		sweepAll(t, c, false)
	})
}

// TestSweepAllKnownUsers is TestSweepAll where Dovecot cannot list its
// users (a static userdb, as an LDAP or SQL one without its iterate
// settings): with --sweep-list known the sweep takes the users Redis has
// a record of, and `dovewarden sweep --all` still brings back the change
// lost with its event. Listing the userdb, the sweep would find no user
// to request.
func TestSweepAllKnownUsers(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v24, v24}, {shapeSplit, v23, v23}}, func(t *testing.T, c pairCase) {
		sweepAll(t, c, true)
	})
}

// sweepAll is TestSweepAll's scenario; known: a static userdb on both
// servers, and the sweep takes the users Redis knows.
func sweepAll(t *testing.T, c pairCase, known bool) {
	const user = "u1"
	cfg := c.config(user)
	cfg.syncFlags = []string{"--sweep-batch-interval", "0s"}
	if known {
		cfg.staticUserdb = true
		cfg.syncFlags = append(cfg.syncFlags, "--sweep-list", "known")
	}
	s := newSystem(t, cfg)
	rdb := redis.NewClient(&redis.Options{Addr: s.redisAddr})
	t.Cleanup(func() { _ = rdb.Close() })
	st := state.New(rdb)

	// 1. A delivery replicated by dovewarden as usual: the user's first
	// dsync, a full one, so that no sweep finds it due.
	start := time.Now()
	s.deliver(user, "before-0")
	wantMessages(t, s.awaitConverged(user)[user], "before", 1)
	var synced state.UserStatus
	err := poll(s.ctx, convergeLimit, 50*time.Millisecond, func() error {
		var err error
		if synced, err = st.Status(s.ctx, user); err != nil {
			return err
		}
		switch {
		case synced.LastStart.Before(start.Add(-time.Second)) || !synced.LastFull:
			return errNotYet("a full dsync of " + user + " by dovewarden")
		case synced.InProgress || !synced.PendingSince.IsZero() || synced.Failed:
			return errNotYet(fmt.Sprintf("%s settled (in progress %v, pending since %v, failed %v)",
				user, synced.InProgress, synced.PendingSince, synced.Failed))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// 2. The outage: the exporter's event of this delivery finds no
	// ingest and is dropped; nothing reaches Redis.
	s.ingest.stop()
	s.deliver(user, "lost-0")
	if a, b := s.snapshots(user); !a.has("<lost-0."+user+"@") || b.has("<lost-0."+user+"@") {
		t.Fatalf("the delivery during the outage is not on A alone: the scenario tests nothing:\n%s", diff(a, b))
	}
	s.ingest.start()
	s.ingest.waitHTTP(s.ingestBase+"/readyz", 20*time.Second)
	if now, err := st.Status(s.ctx, user); err != nil {
		t.Fatal(err)
	} else if now.InProgress || !now.PendingSince.IsZero() || now.Failed || !now.LastStart.Equal(synced.LastStart) {
		t.Fatalf("the lost change left a mark in redis: the scenario tests nothing: %+v", now)
	}

	// 3. A plain sweep: the user is up to date by everything Redis
	// holds, so the sweep requests nothing and the message stays on A.
	sw := s.sweepOnce(st)
	if sw.Listed == 0 || sw.Total < 1 || sw.Offset < sw.Total {
		t.Fatalf("the plain sweep did not examine %s (listed %d, %d of %d candidates): the scenario tests nothing", user, sw.Listed, sw.Offset, sw.Total)
	}
	for k, n := range sw.Counts {
		if strings.HasPrefix(k, "requested_") && n > 0 {
			t.Errorf("the plain sweep requested a replication (%s=%d): only --all should", k, n)
		}
	}
	if n := metric(t, s.syncBase, "dovewarden_sweep_users_requested_total"); n != 0 {
		t.Errorf("sync counts %v sweep requests after a plain sweep, want 0", n)
	}
	// Whatever a sweep requests is replicated in a second or two; give
	// it some more, then the message must still be missing on B and no
	// dsync of the user must have started.
	hold := time.Now().Add(gapHold)
	for time.Now().Before(hold) {
		s.checkAlive()
		b, err := readSnapshot(s.ctx, s.b, user)
		if err != nil {
			t.Fatal(err)
		}
		if b.has("<lost-0." + user + "@") {
			t.Fatalf("the message lost with its event reached B after a plain sweep: the sweep requested %s without --all", user)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if now, err := st.Status(s.ctx, user); err != nil {
		t.Fatal(err)
	} else if !now.LastStart.Equal(synced.LastStart) {
		t.Fatalf("a dsync of %s started at %v after a plain sweep: only --all should request it", user, now.LastStart)
	}

	// 4. `dovewarden sweep --all`: the recovery time becomes the
	// request's, and the sweep requests the user (recovery).
	asked := time.Now()
	sw = s.sweepOnce(st, "--all")
	if n := sw.Counts["requested_recovery"]; n != 1 {
		t.Errorf("the sweep --all requested %d users for recovery, want 1 (counts %v)", n, sw.Counts)
	}
	if n := metric(t, s.syncBase, "dovewarden_sweep_users_requested_total", `reason="recovery"`); n != 1 {
		t.Errorf("sync counts %v recovery requests of the sweeps, want 1", n)
	}
	if v, err := rdb.Get(s.ctx, state.RecoveryKey).Int64(); err != nil {
		t.Errorf("no recovery time after a sweep --all: %v", err)
	} else if at := time.UnixMilli(v); at.Before(asked.Add(-time.Second)) || at.After(time.Now()) {
		t.Errorf("recovery time %v, want the request's (%v)", at, asked)
	}
	snap, err := s.converged(user, allLimit)
	if err != nil {
		failures.reason(t, fmt.Sprintf("%s not replicated after a sweep --all: %v", user, err))
		t.Fatalf("%s not replicated after a sweep --all: %v", user, err)
	}
	wantMessages(t, snap, "lost", 1)
}

// gapHold is how long, after a plain sweep finished, the test watches B
// for the lost message, and allLimit how long the message may take to
// reach B after a sweep --all: the request and its dsync take a second or
// two on a loaded 2-core machine.
const (
	gapHold  = 4 * time.Second
	allLimit = 30 * time.Second
)

// deliver delivers message tag to user on A over LMTP.
func (s *system) deliver(user, tag string) {
	s.t.Helper()
	if err := dovecottest.DeliverLMTP(s.a.LMTPAddr, "sender@example.test", user+"@example.test", message(user, tag, "Delivered.")); err != nil {
		s.t.Fatal(err)
	}
}

// sweepOnce asks for a sweep with `dovewarden sweep` and extra flags, waits
// until a sweep started after the request completed, by its status in
// Redis, and returns that status.
func (s *system) sweepOnce(st *state.Store, extra ...string) state.SweepStatus {
	s.t.Helper()
	asked := time.Now()
	s.requestSweep(extra...)
	var sw state.SweepStatus
	err := poll(s.ctx, 20*time.Second, 50*time.Millisecond, func() error {
		s.checkAlive()
		var err error
		if sw, err = st.SweepStatus(s.ctx); err != nil {
			return err
		}
		// Redis's clock is this machine's: a millisecond field rounds down.
		if sw.ID == "" || sw.Started.Before(asked.Add(-time.Millisecond)) {
			return errNotYet("a sweep started after the request")
		}
		if sw.Running || sw.Finished.IsZero() || !sw.LastCompletedEnd.Equal(sw.Finished) {
			return errNotYet(fmt.Sprintf("sweep %s completed (%d of %d candidates)", sw.ID, sw.Offset, sw.Total))
		}
		return nil
	})
	if err != nil {
		s.t.Fatalf("dovewarden sweep %s: %v", strings.Join(extra, " "), err)
	}
	s.t.Logf("dovewarden sweep %s: sweep %s listed %d, examined %d of %d, counts %v", strings.Join(extra, " "), sw.ID, sw.Listed, sw.Offset, sw.Total, sw.Counts)
	return sw
}
