package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
