package broker

import (
	"context"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

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

// typePing is the type of every event of a Knative PingSource.
const typePing = "dev.knative.sources.ping"

// pingSource is a PingSource's event source, as Knative sets it.
func pingSource(namespace, name string) string {
	return "/apis/v1/namespaces/" + namespace + "/pingsources/" + name
}

func withSource(ev cloudevents.Event, source string) cloudevents.Event {
	ev.SetSource(source)
	return ev
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
		"sweep continuation":       {withSource(event("1", typeSweep, "low"), "dovewarden/sync"), "sweep"},
		"our PingSource":           {withSource(event("1", typePing, "low"), pingSource("dovewarden", "dovewarden-sweep")), "sweep"},
		"our retry PingSource":     {withSource(event("1", typePing, "low"), pingSource("dovewarden", "dovewarden-retry")), "sweep"},
		"our PingSource, other ns": {withSource(event("1", typePing, "low"), pingSource("mail", "dovewarden-sweep")), "sweep"},
		"our PingSource, no prio":  {withSource(event("1", typePing, ""), pingSource("dovewarden", "dovewarden-sweep")), "sweep"},
		"our PingSource, high":     {withSource(event("1", typePing, "high"), pingSource("dovewarden", "dovewarden-sweep")), "sweep"},
		"another PingSource":       {withSource(event("1", typePing, "low"), pingSource("dovewarden", "backup")), ""},
		"PingSource name suffix":   {withSource(event("1", typePing, "low"), pingSource("dovewarden", "x-dovewarden-sweep")), ""},
		"PingSource name prefix":   {withSource(event("1", typePing, "low"), pingSource("dovewarden", "dovewarden-sweep-2")), ""},
		"our source, other type":   {withSource(event("1", "com.example.ping", "low"), pingSource("dovewarden", "dovewarden-sweep")), ""},
		"ping type, other source":  {event("1", typePing, "low"), ""},
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
	if high.Subscriber.Ref != "dovewarden-sync-high" || high.Delivery.BackoffPolicy != BackoffExponential ||
		high.Delivery.DeadLetterSink == nil || high.Delivery.DeadLetterSink.Ref != "dovewarden-alerts" {
		t.Errorf("sync-high: %+v %+v", high.Subscriber, high.Delivery)
	}
	// The sync lanes outlast a Redis outage of an hour (docs/events.md):
	// sync answers 503 meanwhile, and what reaches the dead-letter sink is
	// marked pending nowhere.
	for _, name := range []string{"sync-high", "sync-low"} {
		d := byName[name].Delivery
		var total time.Duration
		for n := 1; n <= d.Retry; n++ {
			total += d.Backoff(n)
		}
		if total < time.Hour || total > 2*time.Hour {
			t.Errorf("%s retries for %v in all, want an hour or a little more", name, total)
		}
		if first := d.Backoff(1); first > time.Second {
			t.Errorf("%s waits %v before its first retry, want a second at most (a blip)", name, first)
		}
	}
	// The sweep Trigger sets its own delivery without a dead-letter sink:
	// its retries are its own, its dead-letter sink the Broker's.
	if sweep := byName["sweep"]; sweep.Delivery.DeadLetterSink == nil || sweep.Delivery.DeadLetterSink.Ref != "dovewarden-alerts" || sweep.Delivery.Retry != 3 {
		t.Errorf("sweep delivery %+v", sweep.Delivery)
	}
	if sweep := byName["sweep"]; sweep.Subscriber.Ref != "dovewarden-sync-low" {
		t.Errorf("sweep subscriber %+v", sweep.Subscriber)
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

// TestRouting_PingSourceEventReachesSweepSubscriber publishes the shipped
// PingSource's event (config/knative/pingsource.yaml) into a broker of the
// real manifests: the low-priority sync function gets it once, nobody
// else; another PingSource's event reaches nobody.
func TestRouting_PingSourceEventReachesSweepSubscriber(t *testing.T) {
	cfg := loadEmbedded(t)
	high, low, alerts := newRecorder(), newRecorder(), newRecorder()
	b, _ := start(t, cfg, Options{Handlers: map[string]Handler{
		"dovewarden-sync-high": high.handle, "dovewarden-sync-low": low.handle, "dovewarden-alerts": alerts.handle}})
	ping := cloudevents.NewEvent()
	ping.SetID("ping-1")
	ping.SetType(contract.TypePingSource)
	ping.SetSource(pingSource("dovewarden", "dovewarden-sweep"))
	ping.SetExtension(contract.ExtPriority, "low")
	if err := ping.SetData(cloudevents.ApplicationJSON, []byte(`{"reason":"schedule"}`)); err != nil {
		t.Fatal(err)
	}
	other := ping.Clone()
	other.SetID("ping-2")
	other.SetSource(pingSource("dovewarden", "backup"))
	for _, ev := range []cloudevents.Event{other, ping} {
		if err := b.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if got := low.next(t); got.ID() != "ping-1" || got.Type() != contract.TypePingSource || string(got.Data()) != `{"reason":"schedule"}` {
		t.Errorf("sync-low got %s %s %s", got.ID(), got.Type(), got.Data())
	}
	low.quiet(t)
	high.quiet(t)
	alerts.quiet(t)
}
