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
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/debian"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// livePanels must show data on a working install under load: the panels
// of what every change goes through. The others show failures, which a
// healthy run has none of, or need settings the run does not use.
var livePanels = []string{
	"Failing users", "Pending users", "dsyncs running", "Last sweep ended", "Changes accepted",
	"Events received", "Events dropped", "Since the last event", "Answer time",
	"dsyncs", "dsync duration", "Replication lag", "Decisions", "Coalesced changes", "Pending and failing users", "Events received by sync",
	"Queue depth", "Deliveries", "Delivery duration p99", "Published",
	"Sweep progress", "Users requested", "Listing", "Sweeps", "Sweep work", "Last sweep",
	"Resident memory", "CPU", "Goroutines",
}

// TestDashboard_LiveQueries runs `dovewarden local`, built from this tree,
// against a fake doveadm and under `dovewarden loadgen`, while a real
// Prometheus scrapes it every second. Then every dashboard query and
// alert expression goes through Prometheus's query API: each must
// evaluate, and the panels in livePanels must show data.
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
	local := freeAddr(t)
	start(t, dir, "dovewarden", []string{"DOVEWARDEN_DOVEADM_PASSWORD=" + doveadmtest.Password},
		bin, "local", "--listen", local, "--log-level", "warn", "--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1")
	waitOK(t, "http://"+local+"/readyz")

	prom := freeAddr(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dovewarden\n    static_configs:\n      - targets: ['%s']\n", local)), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, dir, "prometheus", nil, promBin, "--config.file", cfg, "--storage.tsdb.path", filepath.Join(dir, "tsdb"),
		"--web.listen-address", prom, "--log.level", "warn")
	waitOK(t, "http://"+prom+"/-/ready")

	load := exec.Command(bin, "loadgen", "--url", "http://"+local+"/events", "--rate", "300", "--concurrency", "2", "--duration", "12s", "--hosts", "2")
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

	shows := map[string]bool{}
	for _, q := range dashboardQueries(t, loadDashboard(t)) {
		status, n, msg := api(q.expr)
		if status != "success" {
			t.Errorf("%s: Prometheus says %s: %s\n%s", q.where, status, msg, q.expr)
		}
		if n > 0 {
			shows[q.panel] = true
		}
	}
	if !shows[""] {
		t.Error("the job variable lists no job")
	}
	for _, title := range livePanels {
		if !shows[title] {
			t.Errorf("panel %q shows no data after a run under load", title)
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
