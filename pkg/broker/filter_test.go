package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// filterOf loads one Trigger with the given filter spec and returns its
// filter.
func filterOf(t *testing.T, spec string) Filter {
	t.Helper()
	cfg := mustLoad(t, trigger("t", spec+"  subscriber:\n    uri: http://127.0.0.1:1/\n"))
	return cfg.Triggers[0].Filter
}

func richEvent() cloudevents.Event {
	ev := event("id-1", typeChanged, "high")
	ev.SetSource("imap.mail-a.test")
	ev.SetDataSchema("http://schema.test/v1")
	ev.SetTime(time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC))
	_ = ev.SetData("application/json", map[string]string{"a": "b"})
	ev.SetExtension("count", 5)
	ev.SetExtension("flag", true)
	return ev
}

func TestFilters_Dialects(t *testing.T) {
	ev := richEvent()
	for name, tc := range map[string]struct {
		spec string
		want bool
	}{
		"no filter":               {"", true},
		"empty attributes":        {"  filter:\n    attributes: {}\n", true},
		"attributes exact":        {"  filter:\n    attributes:\n      type: " + typeChanged + "\n      priority: high\n", true},
		"attributes mismatch":     {"  filter:\n    attributes:\n      priority: low\n", false},
		"attributes missing":      {"  filter:\n    attributes:\n      region: eu\n", false},
		"attributes any, present": {"  filter:\n    attributes:\n      priority: \"\"\n", true},
		"attributes any, absent":  {"  filter:\n    attributes:\n      region: \"\"\n", false},
		"attributes any, empty":   {"  filter:\n    attributes:\n      datacontentencoding: \"\"\n", false},
		// Knative compares the Go value: an int extension is not "5".
		"attributes int ext":    {"  filter:\n    attributes:\n      count: \"5\"\n", false},
		"exact int ext":         {"  filters:\n  - exact:\n      count: \"5\"\n", true},
		"exact bool ext":        {"  filters:\n  - exact:\n      flag: \"true\"\n", true},
		"exact two attributes":  {"  filters:\n  - exact:\n      type: " + typeChanged + "\n      subject: u2\n", false},
		"exact source":          {"  filters:\n  - exact:\n      source: imap.mail-a.test\n", true},
		"exact id":              {"  filters:\n  - exact:\n      id: id-1\n", true},
		"exact specversion":     {"  filters:\n  - exact:\n      specversion: \"1.0\"\n", true},
		"exact datacontenttype": {"  filters:\n  - exact:\n      datacontenttype: application/json\n", true},
		"exact dataschema":      {"  filters:\n  - exact:\n      dataschema: http://schema.test/v1\n", true},
		"exact time":            {"  filters:\n  - exact:\n      time: \"2026-11-29T10:00:00Z\"\n", true},
		"prefix":                {"  filters:\n  - prefix:\n      type: org.dovewarden.\n", true},
		"prefix miss":           {"  filters:\n  - prefix:\n      type: com.\n", false},
		"prefix missing attr":   {"  filters:\n  - prefix:\n      region: e\n", false},
		"suffix":                {"  filters:\n  - suffix:\n      source: .mail-a.test\n", true},
		"suffix miss":           {"  filters:\n  - suffix:\n      source: .mail-b.test\n", false},
		"not":                   {"  filters:\n  - not:\n      exact:\n        priority: low\n", true},
		"not of match":          {"  filters:\n  - not:\n      exact:\n        priority: high\n", false},
		"any":                   {"  filters:\n  - any:\n    - exact:\n        priority: low\n    - exact:\n        priority: high\n", true},
		"any none":              {"  filters:\n  - any:\n    - exact:\n        priority: low\n    - prefix:\n        type: com.\n", false},
		"all":                   {"  filters:\n  - all:\n    - exact:\n        priority: high\n    - suffix:\n        type: .changed\n", true},
		"all one fails":         {"  filters:\n  - all:\n    - exact:\n        priority: high\n    - suffix:\n        type: .failed\n", false},
		"list is all":           {"  filters:\n  - exact:\n      priority: high\n  - exact:\n      subject: u2\n", false},
		"nested":                {"  filters:\n  - all:\n    - any:\n      - not:\n          prefix:\n            type: org.\n      - all:\n        - exact:\n            subject: u1\n        - not:\n            any:\n            - exact:\n                priority: low\n            - exact:\n                region: eu\n", true},
		"cesql":                 {"  filters:\n  - cesql: \"type = '" + typeChanged + "' AND priority = 'high'\"\n", true},
		"cesql like":            {"  filters:\n  - cesql: \"source LIKE '%.mail-a.test'\"\n", true},
		"cesql false":           {"  filters:\n  - cesql: \"priority = 'low'\"\n", false},
		"cesql missing attr":    {"  filters:\n  - cesql: \"region = 'eu'\"\n", false},
		"cesql exists":          {"  filters:\n  - cesql: \"EXISTS priority AND NOT EXISTS region\"\n", true},
		"cesql quoted names":    {"  filters:\n  - cesql: \"priority = 'high' AND subject <> 'region x'\"\n", true},
		"cesql int attribute":   {"  filters:\n  - cesql: \"INT(region) + 1 > 1\"\n", false},
		"filters wins":          {"  filter:\n    attributes:\n      priority: low\n  filters:\n  - exact:\n      priority: high\n", true},
		"filters wins, fails":   {"  filter:\n    attributes:\n      priority: high\n  filters:\n  - exact:\n      priority: low\n", false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := filterOf(t, tc.spec).Match(ev); got != tc.want {
				t.Errorf("Match = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestFilters_BadCESQL: expressions the CESQL parser fails or panics on are
// configuration errors, never a panic.
func TestFilters_BadCESQL(t *testing.T) {
	for _, expr := range []string{"type = ", "(((", "priority = 'high", "1 +", "AND", "type LIKE", "'a' = ", "EXISTS"} {
		_, err := Load(manifests(brokerDoc, trigger("t", "  filters:\n  - cesql: \""+strings.ReplaceAll(expr, `"`, `\"`)+"\"\n  subscriber:\n    uri: http://127.0.0.1:1/\n")))
		if err == nil {
			t.Errorf("cesql %q loaded; want an error", expr)
		}
	}
}

// TestFilters_CESQLRuntimeErrorIsNoMatch: an evaluation error (a type
// mismatch on this event) is a non-match, as in Knative.
func TestFilters_CESQLRuntimeErrorIsNoMatch(t *testing.T) {
	f := filterOf(t, "  filters:\n  - cesql: \"INT(subject) > 3\"\n")
	if f.Match(richEvent()) {
		t.Error("matched an event whose subject is not a number")
	}
	ev := richEvent()
	ev.SetSubject("7")
	if !f.Match(ev) {
		t.Error("did not match subject 7")
	}
}

// TestFilters_TimeIsMatchedInUTC: Knative's ingress re-sends every event
// through sdk-go, which writes time in UTC, so its filters (and its
// subscribers) see an event sent at 10:00+02:00 at 08:00Z; here too.
func TestFilters_TimeIsMatchedInUTC(t *testing.T) {
	const utc = "2026-11-29T08:00:00Z"
	sub := "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: sub\n"
	cfg := mustLoad(t,
		trigger("attributes", "  filter:\n    attributes:\n      time: \""+utc+"\"\n"+sub),
		trigger("exact", "  filters:\n  - exact:\n      time: \""+utc+"\"\n"+sub),
		trigger("prefix", "  filters:\n  - prefix:\n      time: \"2026-11-29T08:\"\n"+sub),
		trigger("suffix", "  filters:\n  - suffix:\n      time: \"08:00:00Z\"\n"+sub),
		trigger("cesql", "  filters:\n  - cesql: \"time = '"+utc+"'\"\n"+sub),
		typeTrigger("ask", "ask", "replier", ""),
	)
	rec, replier := newRecorder(), newRecorder()
	const local = "2026-11-29T10:00:00+02:00"
	at := time.Date(2026, 11, 29, 10, 0, 0, 0, time.FixedZone("", 2*3600))
	replier.answer = func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		r := event("r1", "x", "")
		r.SetTime(at)
		return &r, nil
	}
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle, "replier": replier.handle}})
	send := map[string]func() error{
		"binary": func() error {
			return ingressError(post(t, b.Ingress(), "POST", "/", with(binaryHeaders, "Ce-Time", local), "{}"))
		},
		"structured": func() error {
			body := strings.Replace(structured, `"subject"`, `"time":"`+local+`","subject"`, 1)
			return ingressError(post(t, b.Ingress(), "POST", "/", map[string]string{"Content-Type": "application/cloudevents+json"}, body))
		},
		"Publish": func() error {
			ev := event("e3", "x", "")
			ev.SetTime(at)
			return b.Publish(context.Background(), ev)
		},
		"reply": func() error { return b.Publish(context.Background(), event("e4", "ask", "")) },
	}
	for name, fn := range send {
		t.Run(name, func(t *testing.T) {
			if err := fn(); err != nil {
				t.Fatal(err)
			}
			for range len(cfg.Triggers) - 1 {
				if got := rec.next(t); got.Time().Location() != time.UTC || got.Time().Format(time.RFC3339Nano) != utc {
					t.Errorf("delivered with time %s (%s); want %s", got.Time(), got.Time().Location(), utc)
				}
			}
			rec.quiet(t)
		})
	}
}

// ingressError is nil for a 202, else the answer.
func ingressError(rr *httptest.ResponseRecorder) error {
	if rr.Code != http.StatusAccepted {
		return fmt.Errorf("ingress answered %d %s", rr.Code, rr.Body)
	}
	return nil
}

// TestFilters_CESQLIdentifiersInAnyCase: sdk-go's CESQL lowercases
// identifiers, so PRIORITY is the attribute priority: a bare attribute or a
// string function in upper or mixed case is refused at load like its
// lower-case spelling, and a boolean expression in any case matches.
func TestFilters_CESQLIdentifiersInAnyCase(t *testing.T) {
	for _, expr := range []string{"PRIORITY", "Priority", "upper(Priority)", "UPPER(PRIORITY)", "CONCAT(TYPE, Region)", "INT(Region) + 1", "LENGTH(Subject)"} {
		_, err := Load(manifests(brokerDoc, trigger("t", "  filters:\n  - cesql: \""+expr+"\"\n  subscriber:\n    uri: http://127.0.0.1:1/\n")))
		if err == nil || !strings.Contains(err.Error(), "not a boolean") {
			t.Errorf("cesql %q: err = %v; want it refused as not a boolean", expr, err)
		}
	}
	for expr, match := range map[string]bool{"PRIORITY = 'high'": true, "Priority = 'HIGH'": false, "EXISTS Priority AND TYPE = '" + typeChanged + "'": true} {
		if got := filterOf(t, "  filters:\n  - cesql: \""+expr+"\"\n").Match(richEvent()); got != match {
			t.Errorf("cesql %q matched %v; want %v", expr, got, match)
		}
	}
}

// panickingExpr is a CESQL expression whose evaluation panics, as a bug
// in the CESQL library would.
type panickingExpr struct{}

func (panickingExpr) Evaluate(cloudevents.Event) (any, error) { panic("boom") }

// TestFilters_CESQLPanicLoggedAFewTimesAMinutePerFilter: a filter whose
// evaluation panics does so on every event; 5 lines a minute are logged
// for it, and another filter (another Trigger, another Broker, a reload)
// with the same expression has lines of its own.
func TestFilters_CESQLPanicLoggedAFewTimesAMinutePerFilter(t *testing.T) {
	var logs safebuf.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })
	for i := range 2 {
		f, err := compileCESQL("t", "subject = 'u1'")
		if err != nil {
			t.Fatal(err)
		}
		f.(*cesqlFilter).expr = panickingExpr{}
		for range 8 {
			if f.Match(richEvent()) {
				t.Fatal("a panicking expression matched")
			}
		}
		if n := strings.Count(logs.String(), "CESQL filter failed"); n != 5*(i+1) {
			t.Fatalf("filter %d: %d lines in all, want %d:\n%s", i, n, 5*(i+1), logs.String())
		}
	}
}
