package e2e

import (
	"flag"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// Settings of BenchmarkLatency (go test -bench flags).
var (
	benchUsers    = flag.Int("e2e.users", 10, "BenchmarkLatency: users appending at once")
	benchMessages = flag.Int("e2e.messages", 300, "BenchmarkLatency: APPENDs per run, spread over the users")
	benchRate     = flag.Float64("e2e.rate", 10, "BenchmarkLatency: APPENDs per second, all users together")
	benchDovecot  = flag.String("e2e.dovecot", dovecottest.V23, "BenchmarkLatency: Dovecot version of both servers")
	benchShape    = flag.String("e2e.shape", string(shapeLocal), "BenchmarkLatency: local or split")
)

// sample is one message's trip.
type sample struct {
	user  string
	ok    time.Time // APPEND answered OK on A
	seen  time.Time // the message's file landed on B
	dsync time.Duration
	// before is APPEND OK to the dsync's start; after the dsync's end to
	// the file on B.
	before, after time.Duration
	synced        bool // the dsync that carried it was found
}

// BenchmarkLatency measures end-to-end replication latency: N users take
// turns to APPEND a message on A, at a steady rate for all of them
// together (below what dsync can do on this machine, so that the numbers
// are latency, not queueing), each user waiting until its previous message
// is on B. "On B" is when the message's file
// lands in the user's Maildir on B (inotify), the moment dsync commits it:
// Dovecot's IDLE would add its own fixed 0.5 s notification delay, and
// polling B over IMAP would load the 2 cores it measures. At the end both
// servers are compared over IMAP as in the tests. It reports, per message,
// the time from APPEND OK to the message on B, the duration of the dsync
// that carried it (from its replication.succeeded event), and their
// difference, dovewarden's overhead: Dovecot's exporter, ingest, the
// broker and the Redis decisions.
//
//	go test ./e2e -run '^$' -bench Latency -benchtime 1x
func BenchmarkLatency(b *testing.B) {
	users := make([]string, *benchUsers)
	for i := range users {
		users[i] = fmt.Sprintf("bench%02d", i)
	}
	s := newSystem(b, config{shape: shape(*benchShape), a: *benchDovecot, b: *benchDovecot, users: users})
	if s.cfg.shape == shapeLocal {
		// dovewarden local sweeps at start: a full sync of every user it
		// never synced. Measure after it.
		if err := poll(s.ctx, convergeLimit, 50*time.Millisecond, func() error { return s.fullSyncsDone(users) }); err != nil {
			b.Fatal(err)
		}
	}
	dsyncs0 := s.dsyncCount()
	b.ResetTimer()
	var all []sample
	for i := 0; i < b.N; i++ {
		all = append(all, s.latencyRun(b, users, *benchMessages)...)
	}
	b.StopTimer()
	s.report(b, all, s.dsyncCount()-dsyncs0)
}

// dsyncCount reads how many dsyncs sync ran (every attempt, reruns of
// coalesced changes included).
func (s *system) dsyncCount() float64 {
	return metric(s.t, s.syncMetrics(), "dovewarden_sync_dsyncs_total")
}

// latencyRun sends messages APPENDs spread over users and times each.
func (s *system) latencyRun(b *testing.B, users []string, messages int) []sample {
	var (
		mu  sync.Mutex
		out []sample
		wg  sync.WaitGroup
	)
	arrivals := s.watchMaildirs(b, users)
	start := time.Now()
	errs := make(chan error, len(users))
	for i, u := range users {
		n := messages / len(users)
		if i < messages%len(users) {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The users take turns: the stream as a whole is evenly spaced.
			every := time.Duration(float64(len(users)) / *benchRate * float64(time.Second))
			first := start.Add(time.Duration(i) * every / time.Duration(len(users)))
			got, err := s.userStream(u, arrivals[u], n, first, every)
			mu.Lock()
			out = append(out, got...)
			mu.Unlock()
			if err != nil {
				errs <- fmt.Errorf("%s: %w", u, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	// The clock says when files landed; the servers must also agree.
	s.awaitConverged(users...)
	return out
}

// userStream appends n messages for user on A, the first at first and
// then one every interval (later when the previous one has not landed on
// B yet), each timed until its file lands in user's Maildir on B.
func (s *system) userStream(user string, arrivals <-chan time.Time, n int, first time.Time, every time.Duration) ([]sample, error) {
	w, err := dovecottest.LoginIMAP(s.ctx, s.a.IMAPAddr, user, password)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	var out []sample
	for i := 0; i < n; i++ {
		time.Sleep(time.Until(first.Add(time.Duration(i) * every)))
		if _, err := w.Append(s.ctx, "INBOX", "", message(user, fmt.Sprintf("lat-%d", i), "Latency probe.")); err != nil {
			return out, err
		}
		smp := sample{user: user, ok: time.Now()}
		select {
		case smp.seen = <-arrivals:
		case <-time.After(convergeLimit):
			return out, fmt.Errorf("message %d not on B after %s", i, convergeLimit)
		}
		out = append(out, smp)
	}
	return out, nil
}

// report matches each sample with the dsync that carried it (the first
// successful dsync of the user that started after the APPEND's OK, less a
// little for the event's own timestamp) and reports percentiles.
func (s *system) report(b *testing.B, all []sample, dsyncs float64) {
	// Wait for the audit events of the last dsyncs.
	time.Sleep(500 * time.Millisecond)
	byUser := map[string][]result{}
	results := s.events.results("org.dovewarden.replication.succeeded")
	for _, r := range results {
		byUser[r.User] = append(byUser[r.User], r)
	}
	for _, rs := range byUser {
		sort.Slice(rs, func(i, j int) bool { return rs[i].Start.Before(rs[j].Start) })
	}
	const slack = 50 * time.Millisecond
	var lat, dur, over, before, after []time.Duration
	unmatched := 0
	for i := range all {
		smp := &all[i]
		for _, r := range byUser[smp.user] {
			if r.Start.After(smp.ok.Add(-slack)) && !r.End.After(smp.seen.Add(slack)) {
				smp.dsync, smp.synced = r.End.Sub(r.Start), true
				smp.before, smp.after = r.Start.Sub(smp.ok), smp.seen.Sub(r.End)
				break
			}
		}
		lat = append(lat, smp.seen.Sub(smp.ok))
		if !smp.synced {
			unmatched++
			continue
		}
		dur = append(dur, smp.dsync)
		over = append(over, smp.seen.Sub(smp.ok)-smp.dsync)
		before, after = append(before, smp.before), append(after, smp.after)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(pct(lat, 50)), "p50-latency-ms")
	b.ReportMetric(ms(pct(lat, 99)), "p99-latency-ms")
	b.ReportMetric(ms(pct(dur, 50)), "p50-dsync-ms")
	b.ReportMetric(ms(pct(dur, 99)), "p99-dsync-ms")
	b.ReportMetric(ms(pct(over, 50)), "p50-overhead-ms")
	b.ReportMetric(ms(pct(over, 99)), "p99-overhead-ms")
	b.ReportMetric(ms(pct(before, 50)), "p50-to-dsync-ms")
	b.ReportMetric(ms(pct(before, 99)), "p99-to-dsync-ms")
	b.ReportMetric(dsyncs, "dsyncs")
	b.ReportMetric(float64(len(all)), "messages")
	b.Logf("%d messages at %.0f/s, %d users, Dovecot %s, %s: %.0f dsyncs (%d messages not matched to one); "+
		"APPEND OK to visible on B p50 %.1f ms p99 %.1f ms; dsync p50 %.1f ms p99 %.1f ms; overhead p50 %.1f ms p99 %.1f ms",
		len(all), *benchRate, *benchUsers, *benchDovecot, *benchShape, dsyncs, unmatched,
		ms(pct(lat, 50)), ms(pct(lat, 99)), ms(pct(dur, 50)), ms(pct(dur, 99)), ms(pct(over, 50)), ms(pct(over, 99)))
	b.Logf("APPEND OK to dsync start p50 %.1f ms p99 %.1f ms; dsync end to the file on B p50 %.1f ms p99 %.1f ms (negative: dsync commits before it returns)",
		ms(pct(before, 50)), ms(pct(before, 99)), ms(pct(after, 50)), ms(pct(after, 99)))
}

// pct returns the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s) + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1]
}
