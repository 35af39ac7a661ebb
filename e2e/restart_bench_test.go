package e2e

import (
	"flag"
	"fmt"
	"sort"
	"testing"
	"time"
)

var benchRestartUsers = flag.Int("e2e.restart-users", 200, "BenchmarkRestart: users on the servers")

// BenchmarkRestart measures what a restart of `dovewarden local` with a
// real Redis costs: its sweep replicates every user whose last dsync
// started before the start (docs/local.md, "Restarts and crashes"), an
// incremental dsync of each, though nothing changed. Reported: the time
// from the start until every user's dsync ended, per user, and the dsyncs'
// own duration.
func BenchmarkRestart(b *testing.B) {
	users := make([]string, *benchRestartUsers)
	for i := range users {
		users[i] = fmt.Sprintf("r%04d", i)
	}
	s := newSystem(b, config{shape: shapeLocal, a: *benchDovecot, b: *benchDovecot, users: users, realRedis: true})
	// The first start's sweep gives every user its first, full sync.
	if err := poll(s.ctx, 10*time.Minute, 100*time.Millisecond, func() error { return s.fullSyncsDone(users) }); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.local.stop()
		start := time.Now()
		s.local.start()
		s.local.waitHTTP(s.ingestBase+"/readyz", 20*time.Second)
		var last time.Time
		var durs []float64
		err := poll(s.ctx, 10*time.Minute, 100*time.Millisecond, func() error {
			seen := map[string]bool{}
			durs = durs[:0]
			for _, r := range s.events.results("org.dovewarden.replication.succeeded") {
				if r.Start.After(start) && !seen[r.User] {
					seen[r.User] = true
					durs = append(durs, float64(r.DurationMS))
					if r.End.After(last) {
						last = r.End
					}
				}
			}
			if len(seen) < len(users) {
				return errNotYet(fmt.Sprintf("%d of %d users replicated since the restart", len(seen), len(users)))
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		sort.Float64s(durs)
		took := last.Sub(start)
		b.ReportMetric(took.Seconds(), "s-to-all")
		b.ReportMetric(float64(took.Milliseconds())/float64(len(users)), "ms/user")
		b.ReportMetric(durs[len(durs)/2], "dsync-p50-ms")
		b.ReportMetric(durs[len(durs)*99/100], "dsync-p99-ms")
	}
}
