// Package monitoring checks the Prometheus alert rules and the Grafana
// dashboard of this folder: the rules with Prometheus's own promtool
// (syntax, and the unit tests of alerts_test.yaml), the dashboard with
// Grafana's own Go types, and every expression of both against the
// metrics dovewarden really registers. It is a module of its own so that
// Prometheus's dependencies stay out of dovewarden's build.
package monitoring

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	grafanaprom "github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/promql/parser"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	brokerconfig "github.com/dovewarden/dovewarden-knative/config/broker"
	"github.com/dovewarden/dovewarden-knative/internal/debian"
	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
	"github.com/dovewarden/dovewarden-knative/pkg/syncer"
	"github.com/dovewarden/dovewarden-knative/pkg/userlist"
)

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := debian.Ensure("promtool", "prometheus")
	if errors.Is(err, debian.ErrNotRoot) && os.Geteuid() != 0 {
		t.Skipf("promtool: %v", err) // CI runs as root and installs it
	}
	if err != nil {
		t.Fatalf("promtool: %v", err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestAlerts_Promtool: the rules load in Prometheus, and each alert fires
// in its unit test when it should, with the labels and text expected, and
// stays quiet when it should not.
func TestAlerts_Promtool(t *testing.T) {
	out := promtool(t, "check", "rules", "alerts.yaml")
	rules := alertRules(t)
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(rules)); !strings.Contains(out, want) {
		t.Fatalf("promtool check rules: want %q in\n%s", want, out)
	}
	promtool(t, "test", "rules", "alerts_test.yaml")
}

type rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func alertRules(t *testing.T) []rule {
	t.Helper()
	var f struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	readYAML(t, "alerts.yaml", &f)
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatal("alerts.yaml: no rules")
	}
	return out
}

func readYAML(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// TestAlerts_EveryAlertIsTested: each rule has a severity Alertmanager can
// route on, a summary and a description, and alerts_test.yaml makes it
// fire at least once and checks it quiet at least once.
func TestAlerts_EveryAlertIsTested(t *testing.T) {
	var tests struct {
		RuleFiles          []string `json:"rule_files"`
		EvaluationInterval string   `json:"evaluation_interval"`
		Tests              []struct {
			Interval    string `json:"interval"`
			InputSeries []struct {
				Series string `json:"series"`
				Values string `json:"values"`
			} `json:"input_series"`
			AlertRuleTest []struct {
				EvalTime  string `json:"eval_time"`
				Alertname string `json:"alertname"`
				ExpAlerts []struct {
					ExpLabels      map[string]string `json:"exp_labels"`
					ExpAnnotations map[string]string `json:"exp_annotations"`
				} `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	readYAML(t, "alerts_test.yaml", &tests)
	fires, quiet := map[string]int{}, map[string]int{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	seen := map[string]bool{}
	for _, r := range alertRules(t) {
		if seen[r.Alert] {
			t.Errorf("%s: two rules of that name", r.Alert)
		}
		seen[r.Alert] = true
		if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
			t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: needs a summary and a description", r.Alert)
		}
		if fires[r.Alert] == 0 {
			t.Errorf("%s: alerts_test.yaml never makes it fire", r.Alert)
		}
		if quiet[r.Alert] == 0 {
			t.Errorf("%s: alerts_test.yaml never checks that it stays quiet", r.Alert)
		}
	}
	for name := range fires {
		if !seen[name] {
			t.Errorf("alerts_test.yaml tests %s, which alerts.yaml does not have", name)
		}
	}
}

// grafana substitutes its variables before a query reaches Prometheus.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__range", "6h", "$__interval", "1m", "$job", "dovewarden")

// query is one expression: where it is, the panel's id (0 for an alert
// or a variable) and the PromQL.
type query struct {
	where string
	panel uint32
	expr  string
}

// board is the dashboard decoded into Grafana's types.
type board struct {
	*dashboard.Dashboard
	panels []dashboard.Panel    // every panel, those of rows too
	rows   []dashboard.RowPanel // the rows
}

func loadDashboard(t *testing.T) board {
	t.Helper()
	plugins.RegisterDefaultPlugins()
	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard.Dashboard
	if err := sdkError(d.UnmarshalJSONStrict(raw)); err != nil {
		t.Fatalf("dashboard.json is not a Grafana dashboard: %v", err)
	}
	if err := sdkError(d.Validate()); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	// The SDK drops a panel, and a panel's query, that decoded without
	// error (it takes its empty list of errors for an error), so each is
	// decoded here with the same strict decoders.
	var list struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	b := board{Dashboard: &d}
	for i, rawPanel := range list.Panels {
		where := fmt.Sprintf("panels[%d]", i)
		var kind struct {
			Type   string            `json:"type"`
			Panels []json.RawMessage `json:"panels"`
		}
		if err := json.Unmarshal(rawPanel, &kind); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if kind.Type != "row" {
			b.panels = append(b.panels, decodePanel(t, where, rawPanel))
			continue
		}
		var r dashboard.RowPanel
		if err := sdkError(r.UnmarshalJSONStrict(rawPanel)); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		b.rows = append(b.rows, r)
		for j, rawChild := range kind.Panels {
			b.panels = append(b.panels, decodePanel(t, fmt.Sprintf("%s.panels[%d]", where, j), rawChild))
		}
	}
	if len(b.panels) == 0 {
		t.Fatal("dashboard.json: no panels")
	}
	return b
}

// decodePanel decodes one panel and its queries strictly.
func decodePanel(t *testing.T, where string, raw json.RawMessage) dashboard.Panel {
	t.Helper()
	var p dashboard.Panel
	if err := sdkError(p.UnmarshalJSONStrict(raw)); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if err := sdkError(p.Validate()); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	var targets struct {
		Targets []json.RawMessage `json:"targets"`
	}
	if err := json.Unmarshal(raw, &targets); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	// Every query is Prometheus's; decoded with its own strict decoder.
	p.Targets = nil
	for i, rawQuery := range targets.Targets {
		q := &grafanaprom.Dataquery{}
		err := sdkError(q.UnmarshalJSONStrict(rawQuery))
		if err == nil {
			err = sdkError(q.Validate())
		}
		if err != nil {
			t.Fatalf("%s.targets[%d]: %v", where, i, err)
		}
		p.Targets = append(p.Targets, q)
	}
	return p
}

// sdkError is err, or nil for the empty list of errors that the Grafana
// SDK returns as a non-nil error when it found none.
func sdkError(err error) error {
	var list cog.BuildErrors
	if errors.As(err, &list) && len(list) == 0 {
		return nil
	}
	return err
}

func dashboardQueries(t *testing.T, d board) []query {
	t.Helper()
	var qs []query
	for _, p := range d.panels {
		for _, tg := range p.Targets {
			q := tg.(*grafanaprom.Dataquery)
			qs = append(qs, query{fmt.Sprintf("panel %d %s", deref(p.Id), strconv.Quote(deref(p.Title))), deref(p.Id), grafanaVars.Replace(q.Expr)})
		}
	}
	// A query variable's label_values(SELECTOR, LABEL) asks Prometheus
	// for SELECTOR's series.
	lv := regexp.MustCompile(`^label_values\((.*), *([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var s string
		switch {
		case v.Query == nil:
		case v.Query.String != nil:
			s = *v.Query.String
		case v.Query.Map != nil:
			s, _ = v.Query.Map["query"].(string)
		}
		m := lv.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, s)
			continue
		}
		qs = append(qs, query{"variable " + v.Name, 0, fmt.Sprintf("count by (%s) (%s)", m[2], m[1])})
	}
	return qs
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestDashboard_GrafanaTypes: the dashboard decodes strictly into Grafana's
// own types (no field Grafana does not know, panels and queries of known
// plugins), every panel queries the dashboard's Prometheus data source
// and says what it shows, and no two panels overlap.
func TestDashboard_GrafanaTypes(t *testing.T) {
	d := loadDashboard(t)
	if deref(d.Uid) == "" || deref(d.Title) == "" {
		t.Error("dashboard.json needs a uid and a title")
	}
	var hasDS bool
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Name == "datasource" && v.Query != nil && deref(v.Query.String) == "prometheus" {
			hasDS = true
		}
	}
	if !hasDS {
		t.Error(`dashboard.json: no "datasource" variable of Prometheus data sources`)
	}
	ps, rows := d.panels, d.rows
	ids := map[uint32]string{}
	type cell struct{ x, y uint32 }
	taken := map[cell]string{}
	claim := func(title string, g *dashboard.GridPos) {
		if g == nil {
			t.Errorf("panel %q: no gridPos", title)
			return
		}
		if g.W == 0 || g.H == 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside Grafana's 24 columns", title, *g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Errorf("panel %q overlaps %q at column %d, row %d", title, other, x, y)
					return
				}
				taken[cell{x, y}] = title
			}
		}
	}
	for _, r := range rows {
		if prev, ok := ids[r.Id]; ok {
			t.Errorf("row %q has the id of %q", deref(r.Title), prev)
		}
		ids[r.Id] = deref(r.Title)
		claim(deref(r.Title), r.GridPos)
	}
	titles := map[string]bool{}
	for _, p := range ps {
		title := deref(p.Title)
		if prev, ok := ids[deref(p.Id)]; ok || p.Id == nil || deref(p.Id) == 0 {
			t.Errorf("panel %q: id missing or the id of %q", title, prev)
		}
		if titles[title] {
			t.Errorf("panel %q: two panels of that title", title)
		}
		titles[title] = true
		ids[deref(p.Id)] = title
		claim(title, p.GridPos)
		if title == "" || deref(p.Description) == "" {
			t.Errorf("panel %q: needs a title and a description", title)
		}
		if p.Datasource == nil || deref(p.Datasource.Uid) != "${datasource}" || deref(p.Datasource.Type) != "prometheus" {
			t.Errorf("panel %q: data source %+v, want the dashboard's ${datasource}", title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			q := tg.(*grafanaprom.Dataquery)
			if q.Datasource == nil || deref(q.Datasource.Uid) != "${datasource}" {
				t.Errorf("panel %q: a query of data source %+v, want the dashboard's ${datasource}", title, q.Datasource)
			}
			if q.RefId == nil || refs[*q.RefId] {
				t.Errorf("panel %q: a query without a refId of its own", title)
			} else {
				refs[*q.RefId] = true
			}
		}
	}
}

// family is what the registry says of one metric.
type family struct {
	labels    map[string]bool
	histogram bool
	help      string
}

var descRE = regexp.MustCompile(`^Desc\{fqName: "([^"]+)", help: ("(?:[^"\\]|\\.)*"), .*variableLabels: \{([^}]*)\}\}$`)

// registry builds every role as local mode and the Knative functions do,
// with the same constructors, on one registry.
func registry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := metrics.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	icfg, err := ingest.Load(flag.NewFlagSet("ingest", flag.ContinueOnError), nil, env(map[string]string{"K_SINK": "http://127.0.0.1:9/"}))
	if err != nil {
		t.Fatal(err)
	}
	_, closeIngest, err := ingest.Build(icfg, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeIngest() })

	mr := miniredis.RunT(t)
	scfg, err := syncer.Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL":        "redis://" + mr.Addr(),
		"DOVEWARDEN_DOVEADM_URL":      "http://127.0.0.1:9/doveadm/v1",
		"DOVEWARDEN_DOVEADM_PASSWORD": "secret",
		"DOVEWARDEN_DESTINATION":      "tcp:replica:12345",
		"K_SINK":                      "http://127.0.0.1:9/",
	}))
	if err != nil {
		t.Fatal(err)
	}
	_, closeSync, err := syncer.Build(context.Background(), scfg, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeSync() })

	bcfg, err := broker.Load(brokerconfig.FS)
	if err != nil {
		t.Fatal(err)
	}
	// In-process subscribers for the Triggers' refs, as local mode has;
	// nothing is published, so none is called.
	handlers := map[string]broker.Handler{}
	for _, tr := range bcfg.Triggers {
		if tr.Subscriber.Ref != "" {
			handlers[tr.Subscriber.Ref] = func(context.Context, cloudevents.Event) (*cloudevents.Event, protocol.Result) { return nil, nil }
		}
	}
	b, err := broker.New(bcfg, broker.Options{Registerer: reg, Logger: log, Handlers: handlers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown(context.Background()) })
	userlist.NewLoadMetrics(reg)
	// Every role serving HTTPS (--tls-cert-file).
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.Options{}
	if srv.TLSCertFile, srv.TLSKeyFile, err = ca.Issue(dir, testcert.Leaf{Name: "mail", Hosts: []string{"mail.test"}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.LoadTLS(log, reg); err != nil {
		t.Fatal(err)
	}
	// Every role's listener: its connections and their bound.
	srv.KeyPair, srv.Metrics, srv.MaxConnections, srv.ShutdownTimeout = nil, reg, server.DefaultMaxConnections, time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- server.ServeListener(ctx, log, srv, ln, http.NotFoundHandler(), func(net.Addr) { close(served) })
	}()
	select {
	case <-served:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })

	// Every role's /metrics: promhttp counts its scrapes' errors in reg.
	metrics.Handler(reg, nil)
	return reg
}

// registered lists every metric of registry by name, with its labels,
// whether a series exists yet or not.
func registered(t *testing.T) map[string]family {
	t.Helper()
	reg := registry(t)
	ch := make(chan *prometheus.Desc)
	go func() { reg.Describe(ch); close(ch) }()
	out := map[string]family{}
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s (client_golang changed Desc.String?)", d)
		}
		help, err := strconv.Unquote(m[2])
		if err != nil {
			t.Fatalf("cannot read the help of %s: %v", d, err)
		}
		f := family{labels: map[string]bool{}, help: help}
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
				f.labels[l] = true
			}
		}
		out[m[1]] = f
	}
	// Desc does not tell a histogram from a counter; these are ours.
	for _, h := range []string{metrics.IngestRequestSeconds, metrics.IngestSendSeconds, metrics.SyncDsyncSeconds, metrics.SyncLagSeconds, metrics.BrokerDeliverySeconds} {
		name := metrics.Namespace + "_" + h
		f, ok := out[name]
		if !ok {
			t.Fatalf("histogram %s is not registered", name)
		}
		f.histogram = true
		out[name] = f
	}
	return out
}

// targetLabels are added by Prometheus to every series it scrapes (pod
// and namespace by the usual Kubernetes relabelling), and le is a
// histogram bucket's bound.
var targetLabels = map[string]bool{"job": true, "instance": true, "pod": true, "namespace": true}

// scrapeSeries are the series Prometheus adds for each target it scrapes
// (with the target's labels only).
var scrapeSeries = map[string]family{"up": {labels: map[string]bool{}}}

// TestMonitoring_ExpressionsUseRealMetrics parses every alert and panel
// expression with Prometheus's own parser, and holds each metric name and
// label it uses to what dovewarden registers: a renamed metric or label
// would otherwise leave a panel empty and an alert silent for ever.
func TestMonitoring_ExpressionsUseRealMetrics(t *testing.T) {
	fams := registered(t)
	var qs []query
	for _, r := range alertRules(t) {
		qs = append(qs, query{"alert " + r.Alert, 0, r.Expr})
	}
	qs = append(qs, dashboardQueries(t, loadDashboard(t))...)
	for _, q := range qs {
		expr, err := promQL.ParseExpr(q.expr)
		if err != nil {
			t.Errorf("%s: %v\n%s", q.where, err, q.expr)
			continue
		}
		for _, p := range checkExpr(expr, fams) {
			t.Errorf("%s: %s\n%s", q.where, p, q.expr)
		}
	}
}

// checkExpr lists what expr uses that is not registered.
func checkExpr(expr parser.Expr, fams map[string]family) []string {
	var problems []string
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			if n.Name == "" {
				return nil // {__name__=~"..."}: checked by its matchers below
			}
			f, ok := lookup(fams, n.Name)
			if !ok {
				f, ok = scrapeSeries[n.Name]
			}
			if !ok {
				problems = append(problems, fmt.Sprintf("metric %s is not registered by dovewarden", n.Name))
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name == "__name__" || targetLabels[m.Name] || f.labels[m.Name] {
					continue
				}
				problems = append(problems, fmt.Sprintf("%s has no label %q (it has %s)", n.Name, m.Name, labelList(f)))
			}
		case *parser.AggregateExpr:
			avail := map[string]bool{}
			parser.Inspect(n.Expr, func(c parser.Node, _ []parser.Node) error {
				if vs, ok := c.(*parser.VectorSelector); ok {
					if f, ok := lookup(fams, vs.Name); ok {
						for l := range f.labels {
							avail[l] = true
						}
					}
				}
				return nil
			})
			for _, l := range n.Grouping {
				if !targetLabels[l] && !avail[l] {
					problems = append(problems, fmt.Sprintf("%s by/without %q: no metric under it has that label", n.Op, l))
				}
			}
		}
		return nil
	})
	return problems
}

// lookup finds a series name's metric: a histogram's _bucket, _sum and
// _count series too (its buckets with the le label).
func lookup(fams map[string]family, name string) (family, bool) {
	if f, ok := fams[name]; ok && !f.histogram {
		return f, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if f, found := fams[base]; ok && found && f.histogram {
			if suffix == "_bucket" {
				f = family{labels: maps.Clone(f.labels), histogram: true}
				f.labels["le"] = true
			}
			return f, true
		}
	}
	return family{}, false
}

func labelList(f family) string {
	var ls []string
	for l := range f.labels {
		ls = append(ls, l)
	}
	sort.Strings(ls)
	if len(ls) == 0 {
		return "none"
	}
	return strings.Join(ls, ", ")
}

// TestDashboard_ShowsEveryMetric: a metric dovewarden adds gets a panel.
func TestDashboard_ShowsEveryMetric(t *testing.T) {
	used := map[string]bool{}
	for _, q := range dashboardQueries(t, loadDashboard(t)) {
		expr, err := promQL.ParseExpr(q.expr)
		if err != nil {
			continue // reported by TestMonitoring_ExpressionsUseRealMetrics
		}
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				used[vs.Name] = true
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					used[strings.TrimSuffix(vs.Name, suffix)] = true
				}
			}
			return nil
		})
	}
	var missing []string
	for name := range registered(t) {
		if strings.HasPrefix(name, metrics.Namespace+"_") && !used[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("dashboard.json shows nothing of:\n  %s", strings.Join(missing, "\n  "))
	}
}

// promQL parses as Prometheus does by default (no experimental functions).
var promQL = parser.NewParser(parser.Options{})

// TestMetrics_Lint holds every metric dovewarden serves to Prometheus's
// naming conventions (client_golang's promlint, as `promtool check
// metrics` does): units in base units and in the name, _total on
// counters only, help text on each. A vector with no series yet is not
// gathered: its name and help are linted as a family of the type its name
// suggests.
func TestMetrics_Lint(t *testing.T) {
	reg := registry(t)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gathered := map[string]bool{}
	for _, f := range fams {
		gathered[f.GetName()] = true
	}
	// A vector with no series yet is not gathered: lint its name and help
	// as a family of the type its name and registered() tell (so a counter
	// among them missing its _total would pass as a gauge; its unit would
	// not).
	for name, f := range registered(t) {
		if gathered[name] {
			continue
		}
		typ := dto.MetricType_GAUGE
		switch {
		case f.histogram:
			typ = dto.MetricType_HISTOGRAM
		case strings.HasSuffix(name, "_total"):
			typ = dto.MetricType_COUNTER
		}
		fams = append(fams, &dto.MetricFamily{Name: proto.String(name), Help: proto.String(f.help), Type: typ.Enum()})
	}
	problems, err := promlint.NewWithMetricFamilies(fams).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	if len(fams) < 50 {
		t.Fatalf("gathered only %d metric families", len(fams))
	}
}
