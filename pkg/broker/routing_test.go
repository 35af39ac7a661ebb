package broker

import (
	"os"
	"sort"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	brokerconfig "github.com/dovewarden/dovewarden-knative/config/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
)

func loadEmbedded(t *testing.T) *Config {
	t.Helper()
	cfg, err := Load(brokerconfig.FS)
	if err != nil {
		t.Fatalf("Load(embedded manifests): %v", err)
	}
	return cfg
}

func matching(cfg *Config, ev cloudevents.Event) string {
	var got []string
	for _, tr := range cfg.Triggers {
		if tr.Filter.Match(ev) {
			got = append(got, tr.Name)
		}
	}
	sort.Strings(got)
	return strings.Join(got, ",")
}

// TestRouting_RealManifests routes events through the Triggers of
// config/broker: every change reaches exactly one sync lane (the lanes are
// mutually exclusive), new mail the fast one.
func TestRouting_RealManifests(t *testing.T) {
	cfg := loadEmbedded(t)
	for name, tc := range map[string]struct {
		ev   cloudevents.Event
		want string
	}{
		"new mail":                 {event("1", typeChanged, "high"), "sync-high"},
		"flag change":              {event("1", typeChanged, "low"), "sync-low"},
		"change, no priority":      {event("1", typeChanged, ""), "sync-low"},
		"change, odd priority":     {event("1", typeChanged, "urgent"), "sync-low"},
		"change, priority HIGH":    {event("1", typeChanged, "HIGH"), "sync-low"},
		"admin request, high":      {event("1", typeRequested, "high"), "sync-high"},
		"sweep's request, low":     {event("1", typeRequested, "low"), "sync-low"},
		"request, no priority":     {event("1", typeRequested, ""), "sync-low"},
		"sweep":                    {event("1", typeSweep, "low"), "sweep"},
		"sweep, no priority":       {event("1", typeSweep, ""), "sweep"},
		"failure":                  {event("1", typeFailed, "high"), "replication-failed-alert"},
		"failure, no priority":     {event("1", typeFailed, ""), "replication-failed-alert"},
		"success":                  {event("1", typeSucceeded, "high"), ""},
		"someone else's event":     {event("1", "com.example.other", "high"), ""},
		"type prefix is not match": {event("1", typeChanged+".v2", "high"), ""},
	} {
		t.Run(name, func(t *testing.T) {
			if got := matching(cfg, tc.ev); got != tc.want {
				t.Errorf("routed to [%s], want [%s]", got, tc.want)
			}
		})
	}
}

func TestLoad_RealManifests(t *testing.T) {
	cfg := loadEmbedded(t)
	if cfg.Broker != "dovewarden" {
		t.Errorf("broker %q", cfg.Broker)
	}
	byName := map[string]*Trigger{}
	for _, tr := range cfg.Triggers {
		byName[tr.Name] = tr
	}
	if len(byName) != 4 {
		t.Fatalf("triggers %v", byName)
	}
	high := byName["sync-high"]
	if high.Subscriber.Ref != "dovewarden-sync-high" || high.Delivery.Retry != 10 ||
		high.Delivery.BackoffPolicy != BackoffExponential || high.Delivery.BackoffDelay.Milliseconds() != 200 ||
		high.Delivery.DeadLetterSink == nil || high.Delivery.DeadLetterSink.Ref != "dovewarden-alerts" {
		t.Errorf("sync-high: %+v %+v", high.Subscriber, high.Delivery)
	}
	// The sweep Trigger sets its own delivery without a dead-letter sink:
	// its retries are its own, its dead-letter sink the Broker's.
	if sweep := byName["sweep"]; sweep.Delivery.DeadLetterSink == nil || sweep.Delivery.DeadLetterSink.Ref != "dovewarden-alerts" || sweep.Delivery.Retry != 3 {
		t.Errorf("sweep delivery %+v", sweep.Delivery)
	}
	if alert := byName["replication-failed-alert"]; alert.Subscriber.Ref != "dovewarden-alerts" {
		t.Errorf("alert subscriber %+v", alert.Subscriber)
	}
}

// TestRouting_FinalFailuresFilter loads the filter docs/events.md gives
// for alerts on final failures only, and routes the replication.failed
// events sync makes for each kind of retry through it.
func TestRouting_FinalFailuresFilter(t *testing.T) {
	doc, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(doc), "given up filters so:\n\n```yaml\n")
	filters, _, ok2 := strings.Cut(after, "```")
	if !ok || !ok2 {
		t.Fatal("docs/events.md has no final-failures filter example")
	}
	cfg := mustLoad(t, trigger("final-failures", filters+"  subscriber:\n    uri: http://127.0.0.1:1/\n"))
	req := change.Request{ID: "c1", User: "u1", Priority: change.High}
	for retryBy, want := range map[string]string{
		change.RetryBySync: "", change.RetryByBroker: "", change.RetryBySweep: "final-failures", change.RetryNone: "final-failures",
	} {
		ev, err := contract.Failed(req, change.Failure{User: "u1", Host: "mail-a", RetryBy: retryBy}, "dovewarden/sync")
		if err != nil {
			t.Fatal(err)
		}
		if got := matching(cfg, ev); got != want {
			t.Errorf("retry by %s: routed to [%s], want [%s]", retryBy, got, want)
		}
	}
	ok3, err := contract.Succeeded(req, change.Result{User: "u1"}, "dovewarden/sync")
	if err != nil {
		t.Fatal(err)
	}
	if got := matching(cfg, ok3); got != "" {
		t.Errorf("success routed to [%s]", got)
	}
}
