package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/dovewarden/dovewarden-knative/internal/debian"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// livePanels must show data on a working install under load: the panels
// of what every change goes through, by id, with their titles as a
// check that the id still names that panel. The others show failures,
// which a healthy run has none of, or need settings the run does not use.
var livePanels = map[uint32]string{
	2: "Failing users", 3: "Pending users", 4: "dsyncs running", 5: "New mail lag p99", 6: "Last sweep ended", 7: "Changes accepted",
	9: "Events received", 10: "Changes accepted by priority", 11: "Events dropped", 15: "Since the last event", 48: "Answer time",
	18: "dsyncs", 19: "dsync duration", 20: "Replication lag", 21: "Decisions", 22: "Coalesced changes", 24: "Pending and failing users", 26: "Events received by sync", 27: "Excluded users",
	29: "Queue depth", 30: "Deliveries", 31: "Delivery duration p99", 33: "Published",
	36: "Sweep progress", 37: "Users requested", 38: "Listing", 39: "Sweeps", 40: "Sweep work", 41: "Last sweep",
	43: "Resident memory", 44: "CPU", 45: "Goroutines",
}

// TestDashboard_LiveQueries runs `dovewarden local`, built from this tree,
// against a fake doveadm and under `dovewarden loadgen`, while a real
// Prometheus scrapes it every second. Then every dashboard query and
// alert expression goes through Prometheus's query API: each must
// evaluate, the panels in livePanels must show data, and each
// label="value" matcher must name a value the run's series have.
func TestDashboard_LiveQueries(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test runs Prometheus and dovewarden for about 20 s")
	}
	promBin, err := debian.Ensure("prometheus", "prometheus")
	if err != nil {
		t.Fatalf("prometheus: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "dovewarden")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dovewarden")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	fake := doveadmtest.NewServer(t, "mail-1.loadgen.test", doveadmtest.NewTracker(t))
	users := make([]string, 20)
	for i := range users {
		users[i] = fmt.Sprintf("user%d", i)
	}
	fake.SetUsers(users...)
	// An excluded-users file, so that its metrics have series too; it
	// names none of the run's users.
	excluded := filepath.Join(dir, "excluded-users")
	if err := os.WriteFile(excluded, []byte("someone-else\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	local := freeAddr(t)
	start(t, dir, "dovewarden", []string{"DOVEWARDEN_DOVEADM_PASSWORD=" + doveadmtest.Password},
		bin, "local", "--listen", local, "--log-level", "warn", "--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1",
		"--excluded-users", excluded)
	waitOK(t, "http://"+local+"/readyz")

	prom := freeAddr(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dovewarden\n    static_configs:\n      - targets: ['%s']\n", local)), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, dir, "prometheus", nil, promBin, "--config.file", cfg, "--storage.tsdb.path", filepath.Join(dir, "tsdb"),
		"--web.listen-address", prom, "--log.level", "warn")
	waitOK(t, "http://"+prom+"/-/ready")

	load := exec.Command(bin, "loadgen", "--url", "http://"+local+"/events", "--rate", "300", "--concurrency", "2", "--duration", "12s", "--hosts", "2",
		// Read-only and failed commands too, which the default mix (what
		// the shipped filters send) has none of: the dropped events' panel.
		"--mix", "unfiltered")
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("loadgen: %v\n%s", err, out)
	}
	time.Sleep(3 * time.Second) // two more scrapes of the last counts

	api := func(expr string) (status string, n int, msg string) {
		t.Helper()
		resp, err := http.Get("http://" + prom + "/api/v1/query?query=" + url.QueryEscape(expr))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatalf("query %q: %v", expr, err)
		}
		return r.Status, len(r.Data.Result), r.Error
	}
	if _, n, _ := api(`up{job="dovewarden"} == 1`); n != 1 {
		t.Fatalf("Prometheus does not scrape dovewarden local")
	}

	d := loadDashboard(t)
	titles := map[uint32]string{}
	for _, p := range d.panels {
		titles[deref(p.Id)] = deref(p.Title)
	}
	shows := map[uint32]bool{}
	qs := dashboardQueries(t, d)
	for _, q := range qs {
		status, n, msg := api(q.expr)
		if status != "success" {
			t.Errorf("%s: Prometheus says %s: %s\n%s", q.where, status, msg, q.expr)
		}
		if n > 0 {
			shows[q.panel] = true
		}
	}
	if !shows[0] {
		t.Error("the job variable lists no job")
	}
	for id, title := range livePanels {
		switch {
		case titles[id] != title:
			t.Errorf("livePanels: panel %d is %q in dashboard.json, not %q", id, titles[id], title)
		case !shows[id]:
			t.Errorf("panel %d %q shows no data after a run under load", id, title)
		}
	}

	// A label=value matcher must name a value the metric has: a typo
	// (priority="urgent") leaves a panel empty or an alert silent. The
	// values are those of the run; every matcher's value occurs in it.
	values := map[[2]string][]string{}
	for _, r := range alertRules(t) {
		qs = append(qs, query{"alert " + r.Alert, 0, r.Expr})
	}
	for _, q := range qs {
		expr, err := promQL.ParseExpr(q.expr)
		if err != nil {
			continue // reported by TestMonitoring_ExpressionsUseRealMetrics
		}
		seen := map[matcher]bool{}
		for _, m := range equalityMatchers(expr) {
			if seen[m] {
				continue
			}
			seen[m] = true
			key := [2]string{m.metric, m.label}
			vs, ok := values[key]
			if !ok {
				vs = labelValues(t, prom, m.metric, m.label)
				values[key] = vs
			}
			if !slices.Contains(vs, m.value) {
				t.Errorf("%s: %s{%s=%q}: the run has the values %q", q.where, m.metric, m.label, m.value, vs)
			}
		}
	}
	for _, r := range alertRules(t) {
		if status, n, msg := api(r.Expr); status != "success" || n != 0 {
			t.Errorf("alert %s: %s %s, %d series firing on a healthy run\n%s", r.Alert, status, msg, n, r.Expr)
		}
		// The target-down rule must know dovewarden local's target as one
		// of dovewarden's: asked of targets that are up, it finds it.
		if r.Alert == "DovewardenTargetDown" {
			upExpr := strings.Replace(r.Expr, "up == 0", "up == 1", 1)
			if upExpr == r.Expr {
				t.Errorf("alert %s: no `up == 0` in\n%s", r.Alert, r.Expr)
			} else if status, n, msg := api(upExpr); status != "success" || n != 1 {
				t.Errorf("alert %s: %s %s, %d targets instead of dovewarden local's\n%s", r.Alert, status, msg, n, upExpr)
			}
		}
	}
}

// matcher is a label=value matcher of a metric in an expression.
type matcher struct{ metric, label, value string }

// equalityMatchers lists expr's label=value matchers on dovewarden's own
// labels, not on those Prometheus adds for the target.
func equalityMatchers(expr parser.Expr) []matcher {
	var out []matcher
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok || vs.Name == "" {
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Type == labels.MatchEqual && m.Name != model.MetricNameLabel && !targetLabels[m.Name] {
				out = append(out, matcher{vs.Name, m.Name, m.Value})
			}
		}
		return nil
	})
	return out
}

// labelValues asks Prometheus for the values of label among metric's
// series.
func labelValues(t *testing.T, prom, metric, label string) []string {
	t.Helper()
	u := "http://" + prom + "/api/v1/label/" + url.PathEscape(label) + "/values?match[]=" + url.QueryEscape(metric)
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string   `json:"status"`
		Data   []string `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		t.Fatalf("label values of %s %s: %s %v", metric, label, r.Status, err)
	}
	return r.Data
}

// start runs a program for the test's length, its output in dir/name.log,
// shown when the test fails.
func start(t *testing.T, dir, name string, env []string, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, b)
		}
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitOK waits up to 30 s for u to answer 200.
func waitOK(t *testing.T, u string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s did not answer 200 within 30 s", u)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
