package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// appendN appends n messages tagged prefix-0 ... to user's INBOX on in
// over one IMAP session.
func (s *system) appendN(in *dovecottest.Instance, user, prefix string, n int) {
	s.t.Helper()
	c := s.imap(in, user)
	for i := 0; i < n; i++ {
		if _, err := c.Append(s.ctx, "INBOX", "", message(user, fmt.Sprintf("%s-%d", prefix, i), "x")); err != nil {
			s.t.Fatal(err)
		}
	}
	c.Close()
}

// wantMessages fails the test unless snap holds every message tagged
// prefix-0 ... prefix-(n-1).
func wantMessages(t *testing.T, snap *snapshot, prefix string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if id := fmt.Sprintf("<%s-%d.%s@", prefix, i, snap.user); !snap.has(id) {
			t.Errorf("%s lacks message %s", snap.user, id)
		}
	}
}

// TestReplicaDown is scenario 3: the replica is down while its users
// change. Every failed attempt reaches a subscriber of the shipped
// replication-failed-alert Trigger as a replication.failed event, and
// once the replica is back everything converges with no manual action:
// sync's own retries (a shorter backoff than the default, so that the
// outage fits in them) finish the job.
func TestReplicaDown(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v23, v23}, {shapeSplit, v24, v24}, {shapeLocal, v24, v23}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2"}
		cfg := c.config(users...)
		cfg.syncFlags = []string{"--max-attempts", "12", "--retry-backoff", "300ms", "--retry-backoff-max", "2s"}
		s := newSystem(t, cfg)
		if err := s.b.Halt(); err != nil {
			t.Fatal(err)
		}
		for _, u := range users {
			s.appendN(s.a, u, "while-down", 2)
			s.do(s.imap(s.a, u), "CREATE Outage", "SELECT INBOX", `STORE 1 +FLAGS (\Flagged)`)
		}
		err := poll(s.ctx, convergeLimit, 50*time.Millisecond, func() error {
			for _, u := range users {
				if n := s.failedFor(u); n == 0 {
					return fmt.Errorf("no replication.failed for %s yet", u)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// Changes while the owner waits to retry are merged into it.
		for _, u := range users {
			s.appendN(s.a, u, "later", 2)
		}
		time.Sleep(time.Second)
		if err := s.b.Restart(s.ctx); err != nil {
			t.Fatal(err)
		}
		for u, snap := range s.awaitConverged(users...) {
			wantMessages(t, snap, "while-down", 2)
			wantMessages(t, snap, "later", 2)
			if !snap.has(`mailbox "Outage"`) {
				t.Errorf("%s lacks the folder created during the outage", u)
			}
		}
		// The outage's attempts fail with transport or tempfail. The first
		// dsync once the replica is back may end with exit code 2
		// ("changed": dsync asks to be run again; seen with Dovecot 2.4
		// after the restart, with no IMAP change in flight), which sync
		// retries like the others.
		outage := map[string]bool{}
		for _, r := range s.events.results(contract.TypeReplicationFailed) {
			switch {
			case r.Host != nameA || r.RetryBy != "sync" || r.RetryByExt != "sync":
				t.Errorf("replication.failed for %s: host %q retry_by %q, retryby extension %q; want host %s, retry_by sync", r.User, r.Host, r.RetryBy, r.RetryByExt, nameA)
			case r.Class == "transport" || r.Class == "tempfail":
				outage[r.User] = true
			case r.Class != "changed":
				t.Errorf("replication.failed for %s: class %q; want transport or tempfail (or changed, after the outage)", r.User, r.Class)
			}
		}
		for _, u := range users {
			if !outage[u] {
				t.Errorf("no replication.failed of class transport or tempfail for %s", u)
			}
		}
	})
}

// failedFor counts the replication.failed events the subscriber got for
// user.
func (s *system) failedFor(user string) int {
	n := 0
	for _, r := range s.events.results(contract.TypeReplicationFailed) {
		if r.User == user {
			n++
		}
	}
	return n
}

// TestSyncKilled is scenario 4: the sync process is killed with SIGKILL
// while a dsync runs (a user's lock is held in Redis), changes keep
// coming while it is down, and a new sync process starts at once, as a
// supervisor would. The Broker redelivers what was not answered; the
// dead owner's lock expires after --lock-ttl; the changes merged behind it
// stay pending for the sweep, which the test requests every few seconds
// as the shipped PingSource does on its schedule. dovewarden local gets no
// such help: its restart must sweep by itself.
func TestSyncKilled(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v23, v23}, {shapeSplit, v24, v24}, {shapeSplit, v23, v24}, {shapeLocal, v24, v24}}, func(t *testing.T, c pairCase) {
		cfg := c.config("u1")
		cfg.realRedis = true // local: the lock must outlive the process
		cfg.syncFlags = []string{"--lock-ttl", "2s", "--failed-retry-interval", "1s", "--sweep-batch-interval", "0s"}
		s := newSystem(t, cfg)
		victim, ready := s.sync, s.syncBase+"/readyz"
		if c.shape == shapeLocal {
			victim, ready = s.local, s.ingestBase+"/readyz"
		}
		rdb := redis.NewClient(&redis.Options{Addr: s.redisAddr})
		defer rdb.Close()

		// One MULTIAPPEND of many messages is one event and one long
		// dsync (about a second for 1000 messages).
		sess := s.imap(s.a, "u1")
		segs := []string{"APPEND INBOX"}
		const bulk = 1500
		for i := 0; i < bulk; i++ {
			if i > 0 {
				segs = append(segs, "")
			}
			segs = append(segs, message("u1", fmt.Sprintf("bulk-%d", i), strings.Repeat("Bulk mail. ", 20)))
		}
		if _, tagged, err := sess.CmdLit(s.ctx, append(segs, "")...); err != nil || !dovecottest.IsOK(tagged) {
			t.Fatalf("MULTIAPPEND: %v %s", err, tagged)
		}
		err := poll(s.ctx, convergeLimit, 5*time.Millisecond, func() error {
			n, err := rdb.Exists(s.ctx, state.LockKey("u1")).Result()
			if err != nil || n == 0 {
				return fmt.Errorf("no dsync of u1 running yet (%v)", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		victim.kill()
		out, _ := s.b.Doveadm(s.ctx, "mailbox", "status", "-u", "u1", "messages", "INBOX")
		t.Logf("sync killed mid-dsync; the replica had %s of %d+1 messages", strings.TrimSpace(string(out)), bulk)

		s.appendN(s.a, "u1", "after-kill", 3)
		victim.start()
		victim.waitHTTP(ready, 20*time.Second)
		// dovewarden local needs no help: its own sweeps after a start
		// replicate every user (the one after --lock-ttl takes u1, whose
		// lock the dead run held), which brings the changes made while
		// it was down. The cluster shape relies on the PingSource.
		stop := func() {}
		if c.shape != shapeLocal {
			stop = s.pingSource(2 * time.Second)
		}
		snap := s.awaitConverged("u1")["u1"]
		stop()
		wantMessages(t, snap, "after-kill", 3)
		wantMessages(t, snap, "bulk", bulk)
	})
}

// pingSource requests a sweep every interval, as the shipped PingSource
// does (hourly there), until the returned stop is called.
func (s *system) pingSource(interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-s.ctx.Done():
				return
			case <-tick.C:
				// A refused request is retried on the next tick, as the
				// next scheduled ping would.
				_ = s.trySweep()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// appendStream appends prefix-0, prefix-1, ... to each user's INBOX on A
// over an IMAP session of its own, one message every 100 ms, until n are
// sent or stop is closed (nil: never). wait waits for the streams to end,
// fails the test on an IMAP error, and returns how many each user sent.
func (s *system) appendStream(users []string, prefix string, n int, stop <-chan struct{}) (wait func() []int) {
	var wg sync.WaitGroup
	sent := make([]int, len(users))
	errs := make(chan error, len(users))
	for i, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dovecottest.LoginIMAP(s.ctx, s.a.IMAPAddr, u, password)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for ; sent[i] < n; sent[i]++ {
				if _, err := c.Append(s.ctx, "INBOX", "", message(u, fmt.Sprintf("%s-%d", prefix, sent[i]), "x")); err != nil {
					errs <- err
					return
				}
				select {
				case <-stop:
					sent[i]++
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	return func() []int {
		s.t.Helper()
		wg.Wait()
		close(errs)
		for err := range errs {
			s.t.Fatal(err)
		}
		return sent
	}
}

// TestRedisRestarted is scenario 5: redis-server is restarted in the
// middle of a stream of changes and comes back empty (no persistence):
// locks, marks and dsync states are gone. While it is down sync answers
// 503 and the Broker redelivers; everything converges.
func TestRedisRestarted(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v23, v23}, {shapeLocal, v24, v24}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2"}
		cfg := c.config(users...)
		cfg.realRedis = true
		s := newSystem(t, cfg)
		const n = 60
		wait := s.appendStream(users, "stream", n, nil)
		time.Sleep(time.Second)
		s.redis.stop()
		// Longer than go-redis's own retries (about a second), so that sync
		// has to answer 503 and the Broker has to redeliver.
		time.Sleep(4 * time.Second)
		s.redis.start()
		s.awaitRedis()
		wait()
		for _, snap := range s.awaitConverged(users...) {
			wantMessages(t, snap, "stream", n)
		}
		// The outage must have been felt, or the scenario proved nothing.
		if n := metric(t, s.syncMetrics(), "dovewarden_sync_decisions_total", `decision="unavailable"`); n == 0 {
			t.Error("sync never answered 503 while redis-server was down: the outage was not exercised")
		}
	})
}

// TestRedisDownIngestKeepsUp: while redis-server is down, ingest still
// takes every change Dovecot exports. Dovecot's exporter sends one event
// at a time per host and drops what waits past its timeout (500 ms in
// the snippets); ingest asked Redis's clock for each change and waited
// its whole 50 ms bound while Redis was down, some 20 events a second per
// host, so a stream of 40 a second lost events at the exporter. It now
// asks again only a second after a failure. The stream here is 40
// APPENDs by each of 4 users, 100 ms apart per user (up to 40 a second,
// slower on a loaded machine), all while Redis is down: ingest must
// receive an event for every one.
func TestRedisDownIngestKeepsUp(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v24, v24}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2", "u3", "u4"}
		cfg := c.config(users...)
		cfg.realRedis = true
		s := newSystem(t, cfg)
		s.redis.stop()
		before := metric(t, s.ingestBase, "dovewarden_ingest_events_received_total")
		const n = 40
		s.appendStream(users, "outage", n, nil)()
		sent := n * len(users)
		// Each APPEND is one exported event; the last ones may still be
		// on their way.
		err := poll(s.ctx, convergeLimit, 50*time.Millisecond, func() error {
			got := metric(t, s.ingestBase, "dovewarden_ingest_events_received_total") - before
			if got < float64(sent) {
				return fmt.Errorf("ingest received %v events for %d APPENDs", got, sent)
			}
			return nil
		})
		if err != nil {
			t.Errorf("while Redis was down: %v: Dovecot's exporter dropped the others", err)
		}
		s.redis.start()
		s.awaitRedis()
		snaps := s.awaitConverged(users...)
		for _, u := range users {
			wantMessages(t, snaps[u], "outage", n)
		}
	})
}

// TestRedisFailover: dovewarden finds its Redis through a Sentinel, and
// the primary fails over to its replica in the middle of a stream of
// changes that goes on for two seconds after the switch. Replication goes
// on against the new primary and everything converges; what dovewarden
// records after the switch is on the new primary.
func TestRedisFailover(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v24, v24}, {shapeLocal, v23, v23}}, func(t *testing.T, c pairCase) {
		users := []string{"u1", "u2"}
		cfg := c.config(users...)
		cfg.sentinel = true
		s := newSystem(t, cfg)
		stop := make(chan struct{})
		wait := s.appendStream(users, "failover", 1000, stop)
		time.Sleep(time.Second)
		after, err := s.sentinel.Failover(s.ctx)
		if err != nil {
			close(stop)
			wait()
			t.Fatal(err)
		}
		switched := time.Now()
		if after != s.redisReplica.Addr {
			t.Errorf("the Sentinel's new primary is %s, want the replica %s", after, s.redisReplica.Addr)
		}
		time.Sleep(2 * time.Second)
		close(stop)
		sent := wait()
		snaps := s.awaitConverged(users...)
		for i, u := range users {
			if sent[i] == 0 {
				t.Errorf("%s: no change was made", u)
			}
			wantMessages(t, snaps[u], "failover", sent[i])
		}
		// The users' last successes, after the switch, were recorded on
		// the new primary, or dovewarden never followed the failover.
		rdb := s.redisReplica.Client(t)
		for _, u := range users {
			v, err := rdb.HGet(s.ctx, state.UserKey(u), state.FieldLastSuccess).Int64()
			if err != nil || !time.UnixMilli(v).After(switched) {
				t.Errorf("%s's last success on the new primary: %v (%v), want one after the failover at %v", u, time.UnixMilli(v), err, switched)
			}
		}
	})
}

// syncMetrics is the base URL where sync's metrics are served.
func (s *system) syncMetrics() string {
	if s.cfg.shape == shapeLocal {
		return s.ingestBase
	}
	return s.syncBase
}
