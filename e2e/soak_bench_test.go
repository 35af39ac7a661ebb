package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// Settings of BenchmarkSoak (go test -bench flags; its Dovecot version is
// -e2e.dovecot's).
var (
	soakDuration = flag.Duration("e2e.soak-duration", 5*time.Minute, "BenchmarkSoak: how long the changes go on")
	soakRate     = flag.Float64("e2e.soak-rate", 20, "BenchmarkSoak: changes per second, all users together")
	soakUsers    = flag.Int("e2e.soak-users", 100, "BenchmarkSoak: users on the servers")
	soakEvery    = flag.Duration("e2e.soak-sample", 30*time.Second, "BenchmarkSoak: time between two samples")
)

// soakSample is what one look at `dovewarden local` and its Redis saw.
type soakSample struct {
	at         time.Duration // since the changes began
	rssKB      int64         // VmRSS
	hwmKB      int64         // VmHWM
	fds        int           // entries of /proc/PID/fd
	goroutines float64       // go_goroutines
	heapMB     float64       // go_memstats_heap_inuse_bytes
	series     int           // sample lines of /metrics
	keys       int64         // DBSIZE
	redisMB    float64       // used_memory
	pending    int64         // ZCARD dovewarden:pending
	failed     int64         // ZCARD dovewarden:failed
	running    int64         // ZCARD dovewarden:running, not pruned
	changes    int64         // changes made so far
	dsyncs     float64       // dovewarden_sync_dsyncs_total
}

func (m soakSample) String() string {
	return fmt.Sprintf("%6.0fs  rss %6.1f MB  hwm %6.1f MB  heap %5.1f MB  goroutines %4.0f  fds %3d  series %4d  "+
		"redis keys %4d  redis mem %5.2f MB  pending %d  failed %d  running %d  changes %6d  dsyncs %6.0f",
		m.at.Seconds(), float64(m.rssKB)/1024, float64(m.hwmKB)/1024, m.heapMB, m.goroutines, m.fds, m.series,
		m.keys, m.redisMB, m.pending, m.failed, m.running, m.changes, m.dsyncs)
}

// BenchmarkSoak runs `dovewarden local` with a redis-server against two
// real Dovecot servers for a long time under a steady, modest stream of
// mixed changes on A (LMTP deliveries, APPENDs, flag changes, expunges,
// folders created, renamed and deleted), and samples what could grow
// without bound: the process's resident memory, goroutines, open file
// descriptors and metric series, and Redis's keys and memory. Each
// sample is logged; at the end the changes stop, both servers must agree
// on every user (as in the tests) and the process must still run. It
// reports the first and last samples and the high-water mark; growth is
// to be judged over the second half of the run, as the first minutes
// include the users' first syncs. No timing is asserted.
//
//	go test ./e2e -run '^$' -bench Soak -benchtime 1x -e2e.soak-duration 10m -timeout 30m
func BenchmarkSoak(b *testing.B) {
	users := make([]string, *soakUsers)
	for i := range users {
		users[i] = fmt.Sprintf("s%04d", i)
	}
	s := newSystem(b, config{shape: shapeLocal, a: *benchDovecot, b: *benchDovecot, users: users, realRedis: true})
	// The start's sweep gives every user its first, full sync.
	if err := poll(s.ctx, 10*time.Minute, 100*time.Millisecond, func() error { return s.fullSyncsDone(users) }); err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.redisAddr})
	b.Cleanup(func() { rdb.Close() })
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.soak(b, rdb, users)
	}
}

func (s *system) soak(b *testing.B, rdb *redis.Client, users []string) {
	pid := s.local.cmd.Process.Pid
	start := time.Now()
	take := func() soakSample {
		b.Helper()
		s.checkAlive()
		return s.soakSample(b, rdb, pid, start)
	}
	var samples []soakSample
	first := take()
	samples = append(samples, first)
	b.Logf("soak: %d users, %.0f changes/s, %s, Dovecot %s, pid %d; Redis keys at the start: %s",
		len(users), *soakRate, *soakDuration, *benchDovecot, pid, redisKeys(s.ctx, b, rdb))
	b.Logf("soak: %s", first)

	load := newSoakLoad(s, b, users)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { load.run(stop); close(done) }()
	// A sample that fails the benchmark stops the changes too: the load's
	// workers log, and must not outlive it.
	stopLoad := sync.OnceFunc(func() { close(stop); <-done })
	defer stopLoad()
	tick := time.NewTicker(*soakEvery)
	end := time.After(*soakDuration)
loop:
	for {
		select {
		case <-tick.C:
			smp := take()
			smp.changes = load.made.Load()
			samples = append(samples, smp)
			b.Logf("soak: %s", smp)
		case <-end:
			break loop
		case <-s.ctx.Done():
			break loop
		}
	}
	tick.Stop()
	stopLoad()
	last := take()
	last.changes = load.made.Load()
	samples = append(samples, last)
	b.Logf("soak: %s (changes stopped)", last)
	b.Logf("soak: changes by kind %s; failed %s; ticks skipped (all workers busy) %d",
		load.counts(&load.byKind), load.counts(&load.errs), load.skipped.Load())
	b.Logf("soak: Redis keys when the changes stopped: %s", redisKeys(s.ctx, b, rdb))

	s.soakSettle(b, rdb, users)
	settled := take()
	settled.changes = load.made.Load()
	b.Logf("soak: %s (all users the same on both servers)", settled)
	b.Logf("soak: Redis keys then: %s", redisKeys(s.ctx, b, rdb))
	b.Logf("soak: replication.failed events %d (by class %s); other events at the collector (dead letters) %d",
		len(s.events.results(contract.TypeReplicationFailed)), failedClasses(s.events.results(contract.TypeReplicationFailed)),
		s.events.deadLetters())

	for _, l := range logSummary(b, s.local.log) {
		b.Logf("soak: dovewarden log: %s", l)
	}

	// The second half: from the sample nearest the middle of the run to
	// the last one taken while the changes went on.
	mid := samples[0]
	for _, smp := range samples {
		if smp.at <= *soakDuration/2 {
			mid = smp
		}
	}
	var hwm int64
	for _, smp := range samples {
		hwm = max(hwm, smp.hwmKB)
	}
	mb := func(kb int64) float64 { return float64(kb) / 1024 }
	b.ReportMetric(mb(first.rssKB), "rss-first-MB")
	b.ReportMetric(mb(last.rssKB), "rss-last-MB")
	b.ReportMetric(mb(last.rssKB-mid.rssKB), "rss-2nd-half-MB")
	b.ReportMetric(mb(hwm), "rss-hwm-MB")
	b.ReportMetric(first.goroutines, "goroutines-first")
	b.ReportMetric(last.goroutines, "goroutines-last")
	b.ReportMetric(float64(first.fds), "fds-first")
	b.ReportMetric(float64(last.fds), "fds-last")
	b.ReportMetric(float64(first.keys), "redis-keys-first")
	b.ReportMetric(float64(last.keys), "redis-keys-last")
	b.ReportMetric(first.redisMB, "redis-MB-first")
	b.ReportMetric(last.redisMB, "redis-MB-last")
	b.ReportMetric(float64(last.changes), "changes")
	b.ReportMetric(last.dsyncs-first.dsyncs, "dsyncs")
}

// soakSettle waits until every user is the same on both servers, as
// awaitConverged does, but goes on past a user that is not, so that the
// failure names every such user; for each it also tries a dsync with the
// state dovewarden stored, then a full one, and says what they answered
// and whether the servers then agree.
func (s *system) soakSettle(b *testing.B, rdb *redis.Client, users []string) {
	b.Helper()
	var bad []string
	for _, u := range users {
		if _, err := s.converged(u, convergeLimit); err != nil {
			bad = append(bad, u)
			b.Errorf("%s not replicated: %v", u, err)
			b.Logf("soak: %s", s.soakProbe(rdb, u))
		}
	}
	if len(bad) > 0 {
		failures.reason(b, fmt.Sprintf("not replicated: %s", strings.Join(bad, " ")))
		b.FailNow()
	}
}

// soakProbe runs, for a user that did not converge, a dsync from A with
// the state dovewarden stored for it (what its next incremental dsync
// would run), then a full one, and reports their answers and whether the
// servers agree after each.
func (s *system) soakProbe(rdb *redis.Client, user string) string {
	var out strings.Builder
	fmt.Fprintf(&out, "%s: its replication.failed events by class %s; ", user, failedClasses(s.userFailures(user)))
	states, err := rdb.HGetAll(s.ctx, state.StateKey(user)).Result()
	if err != nil {
		return out.String() + err.Error()
	}
	run := func(what string, args map[string]any) {
		args["user"], args["destination"], args["allNamespaces"] = user, []string{s.b.Destination}, true
		body, _ := json.Marshal([]any{[]any{"sync", args, "probe"}})
		reply, err := s.a.DoveadmHTTP(s.ctx, string(body))
		if len(reply) > 300 {
			reply = append(reply[:300:300], "..."...)
		}
		fmt.Fprintf(&out, "%s: err %v, reply %s; ", what, err, reply)
		a, aerr := readSnapshot(s.ctx, s.a, user)
		bs, berr := readSnapshot(s.ctx, s.b, user)
		switch {
		case aerr != nil || berr != nil:
			fmt.Fprintf(&out, "snapshots: %v %v; ", aerr, berr)
		case a.equal(bs):
			out.WriteString("then the servers agree; ")
		default:
			fmt.Fprintf(&out, "then they still differ:\n%s\n", diff(a, bs))
		}
	}
	for field, st := range states {
		run("a dsync with the stored state ("+field+")", map[string]any{"state": st})
	}
	run("a full dsync", map[string]any{"state": "", "fullSync": true})
	return out.String()
}

// userFailures are the replication.failed events of user.
func (s *system) userFailures(user string) []result {
	var out []result
	for _, r := range s.events.results(contract.TypeReplicationFailed) {
		if r.User == user {
			out = append(out, r)
		}
	}
	return out
}

// soakSample reads the process's /proc entries, its metrics and Redis.
func (s *system) soakSample(b *testing.B, rdb *redis.Client, pid int, start time.Time) soakSample {
	b.Helper()
	smp := soakSample{at: time.Since(start)}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || len(f) != 2 || f[1] != "kB" {
			b.Fatalf("/proc/%d/status: %q", pid, l)
		}
		if k == "VmRSS" {
			smp.rssKB = n
		} else {
			smp.hwmKB = n
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		b.Fatal(err)
	}
	smp.fds = len(fds)
	m := scrape(b, s.ingestBase)
	smp.goroutines, smp.heapMB, smp.dsyncs = m.sums["go_goroutines"], m.sums["go_memstats_heap_inuse_bytes"]/(1<<20), m.sums["dovewarden_sync_dsyncs_total"]
	smp.series = m.series
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if smp.keys, err = rdb.DBSize(ctx).Result(); err != nil {
		b.Fatal(err)
	}
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "used_memory:"); ok {
			n, _ := strconv.ParseFloat(v, 64)
			smp.redisMB = n / (1 << 20)
		}
	}
	if smp.pending, err = rdb.ZCard(ctx, state.PendingKey).Result(); err != nil {
		b.Fatal(err)
	}
	if smp.failed, err = rdb.ZCard(ctx, state.FailedKey).Result(); err != nil {
		b.Fatal(err)
	}
	if smp.running, err = rdb.ZCard(ctx, state.RunningKey).Result(); err != nil {
		b.Fatal(err)
	}
	return smp
}

// scraped is one read of a /metrics page: each metric's samples summed
// over their labels, and how many samples (series) it held.
type scraped struct {
	sums   map[string]float64
	series int
}

func scrape(b *testing.B, base string) scraped {
	b.Helper()
	resp, err := httpClient.Get(base + "/metrics")
	if err != nil {
		b.Fatalf("scrape %s: %v", base, err)
	}
	defer resp.Body.Close()
	out := scraped{sums: map[string]float64{}}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out.series++
		name := line[:strings.IndexAny(line, "{ ")]
		f := strings.Fields(line[strings.LastIndexByte(line, ' ')+1:])
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			out.sums[name] += v
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatalf("scrape %s: %v", base, err)
	}
	return out
}

// redisKeys counts Redis's keys by kind: the key up to its user's "{",
// or the whole key.
func redisKeys(ctx context.Context, b *testing.B, rdb *redis.Client) string {
	b.Helper()
	counts := map[string]int{}
	it := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for it.Next(ctx) {
		k := it.Val()
		if i := strings.IndexByte(k, '{'); i >= 0 {
			k = k[:i] + "{…}"
		}
		counts[k]++
	}
	if err := it.Err(); err != nil {
		b.Fatal(err)
	}
	var kinds []string
	for k, n := range counts {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	return strings.Join(kinds, ", ")
}

// deadLetters counts the events the collector got that are no
// replication result: the dead-letter sink's.
func (c *collector) deadLetters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ev := range c.evs {
		if t := ev.Type(); t != contract.TypeReplicationSucceeded && t != contract.TypeReplicationFailed {
			n++
		}
	}
	return n
}

// logSummary reads a dovewarden log (slog text, at debug level here):
// its lines by level, then each warning and error message with its
// count, the first 20 such lines themselves, and any line that is no log
// record (a panic, a stray print).
func logSummary(b *testing.B, path string) []string {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	levels := map[string]int{}
	msgs := map[string]int{}
	var stray, warned []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "=== ") {
			continue // the suite's own line at each start
		}
		_, rest, ok := strings.Cut(line, " level=")
		if !strings.HasPrefix(line, "time=") || !ok {
			stray = append(stray, line)
			continue
		}
		level, rest, _ := strings.Cut(rest, " ")
		levels[level]++
		if level == "WARN" || level == "ERROR" {
			msg := strings.TrimPrefix(rest, "msg=")
			if strings.HasPrefix(msg, `"`) {
				if q, err := strconv.QuotedPrefix(msg); err == nil {
					msg = q
				}
			} else {
				msg, _, _ = strings.Cut(msg, " ")
			}
			msgs[level+" "+msg]++
			// The lines themselves say which user and attempt.
			if len(warned) < 20 {
				warned = append(warned, line[:min(len(line), 400)])
			}
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	out := []string{fmt.Sprintf("lines by level %v; %d other lines", levels, len(stray))}
	var keys []string
	for k := range msgs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%dx %s", msgs[k], k))
	}
	for _, l := range warned {
		out = append(out, "line: "+l)
	}
	for i, l := range stray {
		if i == 10 {
			out = append(out, fmt.Sprintf("... and %d more other lines", len(stray)-i))
			break
		}
		out = append(out, "other line: "+l)
	}
	return out
}

func failedClasses(rs []result) string {
	n := map[string]int{}
	for _, r := range rs {
		n[r.Class]++
	}
	return fmt.Sprint(n)
}

// soakLoad makes the changes of BenchmarkSoak: each tick of the rate
// picks a user and a kind of change; a few workers make them on A, one
// change of a user at a time, each over an IMAP session of its own.
type soakLoad struct {
	s     *system
	b     *testing.B
	users []*soakUser

	made    atomic.Int64
	skipped atomic.Int64
	mu      sync.Mutex
	byKind  map[string]int
	errs    map[string]int
	logged  int
}

type soakUser struct {
	mu     sync.Mutex
	name   string
	n      int // messages made so far, for their tags
	folder int // the folder of the create, rename, delete cycle
	stage  int // 0: not there, 1: created, 2: renamed
}

// soakWorkers make changes at once: a slow change (an LMTP delivery while
// dsync runs) does not hold the others back.
const soakWorkers = 8

func newSoakLoad(s *system, b *testing.B, users []string) *soakLoad {
	l := &soakLoad{s: s, b: b, byKind: map[string]int{}, errs: map[string]int{}}
	for _, u := range users {
		l.users = append(l.users, &soakUser{name: u})
	}
	return l
}

// run makes changes at the rate until stop is closed.
func (l *soakLoad) run(stop <-chan struct{}) {
	work := make(chan *soakUser)
	var wg sync.WaitGroup
	for range soakWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range work {
				l.change(u)
			}
		}()
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / *soakRate))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			close(work)
			wg.Wait()
			return
		case <-l.s.ctx.Done():
			close(work)
			wg.Wait()
			return
		case <-tick.C:
			select {
			case work <- l.users[rand.IntN(len(l.users))]:
			default:
				l.skipped.Add(1)
			}
		}
	}
}

// change makes one change of u's on A, picked at random: a delivery
// (20%), an APPEND (15%), a flag or keyword set or cleared (30%), the
// two oldest messages of INBOX expunged (20%; an APPEND while INBOX
// holds three or fewer, so that mailboxes stay small), or the next step
// of a folder's cycle (15%): created with a message in it, renamed,
// deleted. Errors are counted, not fatal: a NO from Dovecot during a
// dsync is Dovecot's business (docs/operations.md).
func (l *soakLoad) change(u *soakUser) {
	u.mu.Lock()
	defer u.mu.Unlock()
	ctx, cancel := context.WithTimeout(l.s.ctx, 30*time.Second)
	defer cancel()
	u.n++
	tag := fmt.Sprintf("soak-%d", u.n)
	kind, err := "", error(nil)
	switch p := rand.IntN(100); {
	case p < 20:
		kind = "deliver"
		err = dovecottest.DeliverLMTP(l.s.a.LMTPAddr, "sender@example.test", u.name+"@example.test", message(u.name, tag, "Delivered."))
	default:
		kind, err = l.imapChange(ctx, u, p, tag)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byKind[kind]++
	if err != nil {
		l.errs[kind]++
		if l.logged < 20 {
			l.logged++
			l.b.Logf("soak: %s of %s: %v", kind, u.name, err)
		}
		return
	}
	l.made.Add(1)
}

func (l *soakLoad) imapChange(ctx context.Context, u *soakUser, p int, tag string) (string, error) {
	c, err := dovecottest.LoginIMAP(ctx, l.s.a.IMAPAddr, u.name, password)
	if err != nil {
		return "login", err
	}
	defer c.Close()
	do := func(cmds ...string) ([]string, error) {
		var all []string
		for _, cmd := range cmds {
			untagged, tagged, err := c.Cmd(ctx, cmd)
			all = append(all, untagged...)
			if err != nil {
				return all, fmt.Errorf("%s: %w", cmd, err)
			}
			if !dovecottest.IsOK(tagged) {
				return all, fmt.Errorf("%s: %s", cmd, tagged)
			}
		}
		return all, nil
	}
	appendMsg := func(mailbox, flags string) error {
		_, err := c.Append(ctx, mailbox, flags, message(u.name, tag, "Appended."))
		return err
	}
	defer func() { _, _, _ = c.Cmd(ctx, "LOGOUT") }()
	if p >= 85 {
		name := fmt.Sprintf("Soak-%d", u.folder)
		switch u.stage {
		case 0:
			u.stage = 1
			if _, err := do("CREATE " + name); err != nil {
				return "create", err
			}
			return "create", appendMsg(name, "")
		case 1:
			u.stage = 2
			_, err := do("RENAME " + name + " " + name + "-renamed")
			return "rename", err
		default:
			u.stage = 0
			u.folder++
			_, err := do("DELETE " + name + "-renamed")
			return "delete", err
		}
	}
	if p < 35 {
		return "append", appendMsg("INBOX", `(\Seen)`)
	}
	untagged, err := do("SELECT INBOX")
	if err != nil {
		return "select", err
	}
	exists := -1
	for _, line := range untagged {
		var n int
		if _, err := fmt.Sscanf(line, "* %d EXISTS", &n); err == nil {
			exists = n
		}
	}
	if exists < 0 {
		return "select", errors.New("SELECT INBOX: no EXISTS")
	}
	if p < 65 {
		if exists == 0 {
			return "append", appendMsg("INBOX", "")
		}
		flag := []string{`\Flagged`, `\Answered`, `$Soak`, `\Seen`}[rand.IntN(4)]
		op := []string{"+FLAGS", "-FLAGS"}[rand.IntN(2)]
		_, err := do(fmt.Sprintf("STORE %d %s (%s)", 1+rand.IntN(exists), op, flag))
		return "flags", err
	}
	if exists <= 3 {
		return "append", appendMsg("INBOX", "")
	}
	_, err = do(`STORE 1:2 +FLAGS.SILENT (\Deleted)`, "EXPUNGE")
	return "expunge", err
}

// counts renders one of the load's counters.
func (l *soakLoad) counts(m *map[string]int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var kinds []string
	for k, n := range *m {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	return strings.Join(kinds, ", ")
}
