package sweep

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// BenchmarkIntegrationDovecot_SweepListing times what a sweep's listing
// step meets: real Dovecot 2.3 and 2.4 with a passwd-file userdb of 10,000,
// 100,000 and 1,000,000 users (DOVEWARDEN_BENCH_LIST_USERS, comma-separated,
// sets other sizes), listed over the doveadm HTTP API. Each iteration lists
// twice: doveadm.HTTP.ListUsers alone (http-ms; first-ms is when the first
// name arrived), then the sweep's start step into a real redis-server with
// the default options (step-ms, of which close-ms the script that closes
// the listing; listed: the users it kept; both means over every
// iteration, the step's own tries of a failed listing included). fails
// counts iterations whose plain listing failed (exit code 65: Dovecot
// 2.4's "Aborted LIST request"), and http-ms and first-ms are the means of
// the others. The peak RSS of this process, of Dovecot's largest process
// and redis-server's peak memory are reported in MB. Needs root (Dovecot
// is started as in the integration tests); never run by `make test`:
//
//	go test ./pkg/sweep -run '^$' -bench 'SweepListing/2.3' -benchtime 3x
//	DOVEWARDEN_BENCH_LIST_USERS=2000000 go test ./pkg/sweep -run '^$' -bench SweepListing -benchtime 2x
func BenchmarkIntegrationDovecot_SweepListing(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("starts Dovecot, which needs root")
	}
	sizes := []int{10_000, 100_000, 1_000_000}
	if s := os.Getenv("DOVEWARDEN_BENCH_LIST_USERS"); s != "" {
		sizes = sizes[:0]
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("DOVEWARDEN_BENCH_LIST_USERS: %q", s)
			}
			sizes = append(sizes, n)
		}
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		for _, n := range sizes {
			b.Run(fmt.Sprintf("%s/%d", v, n), func(b *testing.B) { benchListing(b, v, n) })
		}
	}
}

// bigUserdb lets Dovecot's processes hold a large passwd-file: with the
// default vsz_limit (256 MB) the auth-worker of Dovecot 2.3 and 2.4 runs
// out of memory from about 400,000 users, and every listing fails (exit
// code 65).
const bigUserdb = "service auth-worker {\n  vsz_limit = 2G\n}\nservice auth {\n  vsz_limit = 2G\n}\nservice doveadm {\n  vsz_limit = 2G\n}\n"

func benchListing(b *testing.B, version string, n int) {
	in := dovecottest.StartT(b, dovecottest.Options{Version: version, Name: "mail-a.test", Users: map[string]string{"u0": "pass"},
		ExtraConfig: bigUserdb})
	waitAccepting(b, in.DoveadmHTTPURL)
	// The passwd-file is written here rather than through Options.Users:
	// a map of a million users would weigh on this process's RSS. Dovecot
	// reads the file again when it changes.
	tmp := filepath.Join(in.Dir, "users.new")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range n {
		fmt.Fprintf(w, "user%07d@example.org:{PLAIN}pass::::::userdb_admin=yes\n", i)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(in.Dir, "users")); err != nil {
		b.Fatal(err)
	}
	ep := doveadm.Endpoint{Name: in.Name, URL: in.DoveadmHTTPURL, User: "doveadm", Password: in.DoveadmPassword}
	h := doveadm.NewHTTP(nil, 240*time.Second)
	rdb := redistest.Start(b).Client(b)
	st := state.New(rdb)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	var fails, listed int
	var httpT, firstT, stepT, closeT time.Duration
	var goHWM, doveHWM int
	b.ResetTimer()
	for range b.N {
		clearPeakRSS(append(processTree(in.PID), os.Getpid()))
		start := time.Now()
		var first time.Duration
		count := 0
		err := h.ListUsers(ctx, ep, func(string) error {
			if count == 0 {
				first = time.Since(start)
			}
			count++
			return nil
		})
		took := time.Since(start)
		if err != nil || count != n {
			fails++
			b.Logf("plain listing: %d users in %v: %v", count, took.Round(time.Millisecond), err)
		} else {
			if took > 10*time.Second {
				b.Logf("plain listing: %d users in %v; Dovecot's log:\n%s", count, took.Round(time.Millisecond), lastLines(in.Log(), 12))
			}
			httpT += took
			firstT += first
		}

		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		ts := &timedStore{Store: st}
		sw := New(Defaults, ts, h, []Source{{Name: "mail-a", Endpoint: ep}}, &collector{}, prometheus.NewRegistry(), log)
		start = time.Now()
		if _, err := sw.Step(ctx, "bench", nil); err != nil {
			b.Fatal(err)
		}
		stepT += time.Since(start)
		closeT += ts.listed
		ss, err := st.SweepStatus(ctx)
		if err != nil {
			b.Fatal(err)
		}
		listed += int(ss.Total)
		goHWM = max(goHWM, peakRSS(os.Getpid()))
		for _, p := range processTree(in.PID) {
			doveHWM = max(doveHWM, peakRSS(p))
		}
	}
	b.StopTimer()
	if ok := b.N - fails; ok > 0 {
		b.ReportMetric(float64(httpT.Milliseconds())/float64(ok), "http-ms")
		b.ReportMetric(float64(firstT.Milliseconds())/float64(ok), "first-ms")
	}
	b.ReportMetric(float64(fails), "fails")
	b.ReportMetric(float64(stepT.Milliseconds())/float64(b.N), "step-ms")
	b.ReportMetric(float64(closeT.Milliseconds())/float64(b.N), "close-ms")
	b.ReportMetric(float64(listed)/float64(b.N), "listed")
	b.ReportMetric(float64(goHWM)/1024, "go-MB")
	b.ReportMetric(float64(doveHWM)/1024, "dovecot-MB")
	if info, err := rdb.Info(ctx, "memory").Result(); err == nil {
		for _, l := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory_peak:"); ok {
				bytes, _ := strconv.ParseFloat(v, 64)
				b.ReportMetric(bytes/(1<<20), "redis-MB")
			}
		}
	}
}

// lastLines is the end of a log.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// timedStore times the script that closes the listing (SweepListed).
type timedStore struct {
	*state.Store
	listed time.Duration
}

func (t *timedStore) SweepListed(ctx context.Context, id, token string, l state.SweepListing, lockTTL, usersTTL time.Duration) (int64, bool, error) {
	start := time.Now()
	defer func() { t.listed = time.Since(start) }()
	return t.Store.SweepListed(ctx, id, token, l, lockTTL, usersTTL)
}

func waitAccepting(b *testing.B, raw string) {
	u, err := url.Parse(raw)
	if err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", u.Host, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processTree lists pid and the processes below it.
func processTree(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(s), ')')
		if f := strings.Fields(string(s[i+1:])); len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	in := map[int]bool{pid: true}
	for grew := true; grew; {
		grew = false
		for p, pp := range parent {
			if in[pp] && !in[p] {
				in[p], grew = true, true
			}
		}
	}
	out := make([]int, 0, len(in))
	for p := range in {
		out = append(out, p)
	}
	return out
}

// clearPeakRSS resets the processes' VmHWM (proc(5), clear_refs 5).
func clearPeakRSS(pids []int) {
	for _, p := range pids {
		_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p), []byte("5"), 0)
	}
}

// peakRSS is a process's VmHWM in kB (0 if gone).
func peakRSS(pid int) int {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return kb
		}
	}
	return 0
}
