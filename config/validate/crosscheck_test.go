package validate

// The embedded broker (pkg/broker) reimplements Knative's routing without
// importing Knative. These tests hold it to Knative's own code: the same
// Triggers and events must give the same decisions.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rickb777/date/period"
	"sigs.k8s.io/yaml"

	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/kncloudevents"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
)

// corpus is every combination of the attributes the Triggers look at:
// types (ours, near misses, foreign, the PingSource's) × priorities
// (including missing and odd ones) × sources (PingSources' too) ×
// subjects, with and without a partition key.
func corpus() []cloudevents.Event {
	types := []string{
		"org.dovewarden.mailbox.changed", "org.dovewarden.replication.requested", "org.dovewarden.sweep.requested",
		"org.dovewarden.replication.succeeded", "org.dovewarden.replication.failed",
		"org.dovewarden.mailbox.changed.v2", "org.dovewarden.mailbox", "ORG.DOVEWARDEN.MAILBOX.CHANGED", "com.example.other",
		"dev.knative.sources.ping",
	}
	priorities := []string{"high", "low", "-", "", "HIGH", "urgent", "high "}
	sources := []string{"mail-a.test", "imap.mail-b.test", "dovewarden/sync", "dovewarden/sweep",
		"/apis/v1/namespaces/dovewarden/pingsources/dovewarden-sweep", "/apis/v1/namespaces/dovewarden/pingsources/x-dovewarden-sweep",
		"/apis/v1/namespaces/dovewarden/pingsources/dovewarden-retry"}
	subjects := []string{"u1", "", "admin@example.test"}
	var out []cloudevents.Event
	n := 0
	for _, typ := range types {
		for _, prio := range priorities {
			for _, src := range sources {
				for _, sub := range subjects {
					for _, pk := range []bool{false, true} {
						n++
						ev := cloudevents.NewEvent()
						ev.SetID(fmt.Sprintf("e%d", n))
						ev.SetType(typ)
						ev.SetSource(src)
						if sub != "" {
							ev.SetSubject(sub)
						}
						if prio != "-" {
							ev.SetExtension("priority", prio)
						}
						if pk {
							ev.SetExtension("partitionkey", "u1")
							ev.SetTime(time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC))
						}
						out = append(out, ev)
					}
				}
			}
		}
	}
	return out
}

// knativePasses is what Knative's broker filter does with a filter result:
// deliver unless it failed.
func knativePasses(f eventfilter.Filter, ev cloudevents.Event) bool {
	return f.Filter(context.Background(), ev) != eventfilter.FailFilter
}

// compare evaluates both filters on every event and returns how many
// events Knative passes.
func compare(t *testing.T, ours *broker.Trigger, theirs eventfilter.Filter, events []cloudevents.Event) int {
	t.Helper()
	diffs, passed := 0, 0
	for _, ev := range events {
		o, k := ours.Filter.Match(ev), knativePasses(theirs, ev)
		if k {
			passed++
		}
		if o != k {
			diffs++
			if diffs <= 5 {
				t.Errorf("Trigger %s, event type=%q priority=%v source=%q subject=%q: embedded broker %v, Knative %v",
					ours.Name, ev.Type(), ev.Extensions()["priority"], ev.Source(), ev.Subject(), o, k)
			}
		}
	}
	if diffs > 5 {
		t.Errorf("Trigger %s: %d more differences", ours.Name, diffs-5)
	}
	return passed
}

// TestCrossCheck_RealTriggers: every Trigger of config/broker decides
// every event of the corpus as Knative's eventfilter does.
func TestCrossCheck_RealTriggers(t *testing.T) {
	cfg, err := broker.Load(os.DirFS("../broker"))
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]*broker.Trigger{}
	for _, tr := range cfg.Triggers {
		ours[tr.Name] = tr
	}
	events := corpus()
	checked := 0
	for _, d := range loadManifests(t) {
		tr, ok := d.obj.(*eventingv1.Trigger)
		if !ok {
			continue
		}
		o, ok := ours[tr.Name]
		if !ok {
			t.Errorf("Trigger %s: not loaded by the embedded broker", tr.Name)
			continue
		}
		if n := compare(t, o, triggerFilter(tr), events); n == 0 || n == len(events) {
			t.Errorf("Trigger %s passes %d of %d events: the corpus does not exercise it", tr.Name, n, len(events))
		}
		checked++
	}
	if checked != len(ours) || checked == 0 {
		t.Errorf("compared %d Triggers, the embedded broker has %d", checked, len(ours))
	}
}

// synthetic Triggers use every dialect, nested, on the corpus's attributes.
var synthetic = map[string]string{
	"prefix":          "filters:\n- prefix:\n    type: org.dovewarden.replication.",
	"suffix":          "filters:\n- suffix:\n    source: .test",
	"prefix and not":  "filters:\n- prefix:\n    type: org.dovewarden.\n- not:\n    suffix:\n      type: .succeeded",
	"exact two":       "filters:\n- exact:\n    type: org.dovewarden.mailbox.changed\n    priority: low",
	"exact subject":   "filters:\n- exact:\n    subject: u1",
	"exact time":      "filters:\n- exact:\n    time: \"2026-11-29T10:00:00Z\"",
	"any of three":    "filters:\n- any:\n  - exact:\n      priority: low\n  - suffix:\n      type: .failed\n  - prefix:\n      source: dovewarden/",
	"all nested":      "filters:\n- all:\n  - any:\n    - prefix:\n        type: org.dovewarden.mailbox\n    - exact:\n        type: org.dovewarden.sweep.requested\n  - not:\n      any:\n      - exact:\n          priority: high\n      - suffix:\n          source: mail-b.test",
	"not not":         "filters:\n- not:\n    not:\n      exact:\n        partitionkey: u1",
	"cesql":           "filters:\n- cesql: \"type = 'org.dovewarden.mailbox.changed' AND priority = 'high'\"",
	"cesql like":      "filters:\n- cesql: \"source LIKE '%.test' OR subject LIKE 'admin%'\"",
	"cesql exists":    "filters:\n- cesql: \"EXISTS priority AND NOT EXISTS partitionkey\"",
	"cesql in":        "filters:\n- cesql: \"priority IN ('high', 'urgent')\"",
	"cesql in all":    "filters:\n- all:\n  - cesql: \"LOWER(type) = 'org.dovewarden.mailbox.changed'\"\n  - not:\n      exact:\n        priority: low",
	"attributes":      "filter:\n  attributes:\n    type: org.dovewarden.replication.failed\n    source: dovewarden/sync",
	"attributes any":  "filter:\n  attributes:\n    priority: \"\"",
	"attributes any2": "filter:\n  attributes:\n    subject: \"\"\n    partitionkey: \"\"",
	"attributes none": "filter:\n  attributes: {}",
	"no filter":       "",
	"filters win":     "filter:\n  attributes:\n    priority: low\nfilters:\n- exact:\n    priority: high",
}

// TestCrossCheck_SyntheticTriggers: the same for Triggers covering every
// dialect, each valid for Knative's webhook too.
func TestCrossCheck_SyntheticTriggers(t *testing.T) {
	ctx := webhookContext(t)
	events := corpus()
	for name, spec := range synthetic {
		t.Run(name, func(t *testing.T) {
			doc := "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  namespace: dovewarden\nspec:\n  broker: dovewarden\n  subscriber:\n    uri: http://sub.test/\n" +
				indent(spec)
			var tr eventingv1.Trigger
			if err := yaml.UnmarshalStrict([]byte(doc), &tr); err != nil {
				t.Fatal(err)
			}
			tr.SetDefaults(ctx)
			if fe := tr.Validate(ctx); fe != nil {
				t.Fatalf("Knative rejects the Trigger: %v", fe)
			}
			cfg, err := broker.Load(fstest.MapFS{"t.yaml": {Data: []byte("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: dovewarden\n---\n" + doc)}})
			if err != nil {
				t.Fatal(err)
			}
			n := compare(t, cfg.Triggers[0], triggerFilter(&tr), events)
			if matchesAll := name == "no filter" || name == "attributes none"; (n == len(events)) != matchesAll || n == 0 {
				t.Errorf("passes %d of %d events: the corpus does not exercise it", n, len(events))
			}
		})
	}
}

func indent(spec string) string {
	var b strings.Builder
	for _, line := range strings.Split(spec, "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

// TestCrossCheck_Durations: ISO-8601 durations parse as Knative's parser
// (rickb777/date/period, then Duration) reads them.
func TestCrossCheck_Durations(t *testing.T) {
	for _, s := range []string{
		"PT0.5S", "PT0,5S", "PT0.2S", "PT0.25S", "PT0.05S", "PT1S", "PT5S", "PT59S", "PT60S", "PT90S", "PT3600S",
		"PT1M", "PT1.5M", "PT90M", "PT1H", "PT1H30M", "PT1M30.5S", "PT36H", "PT0S", "P1D", "P1W", "P2W", "P1DT12H",
		"P1M", "P1Y", "P1Y2M3DT4H5M6S", "P0D", "PT100H", "P7D", "P30D", "PT2.75H",
	} {
		ours, err := broker.ParseDuration(s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		p, err := period.Parse(s)
		if err != nil {
			t.Errorf("%s: Knative's parser: %v", s, err)
			continue
		}
		theirs, _ := p.Duration()
		if ours != theirs {
			t.Errorf("%s: embedded broker %v, Knative %v", s, ours, theirs)
		}
	}
}

// TestCrossCheck_Retry: the same statuses are retried, with the same
// waits, as Knative's dispatcher (kncloudevents).
func TestCrossCheck_Retry(t *testing.T) {
	for code := 100; code < 600; code++ {
		retry, _ := kncloudevents.SelectiveRetry(context.Background(), &http.Response{StatusCode: code}, nil)
		if got := broker.Retriable(code); got != retry {
			t.Errorf("HTTP %d: embedded broker retries %v, Knative %v", code, got, retry)
		}
	}
	for _, policy := range []eventingduckv1.BackoffPolicyType{eventingduckv1.BackoffPolicyExponential, eventingduckv1.BackoffPolicyLinear} {
		for _, delay := range []string{"PT0.2S", "PT1S", "PT5S"} {
			retry := int32(10)
			spec := eventingduckv1.DeliverySpec{Retry: &retry, BackoffPolicy: &policy, BackoffDelay: &delay}
			rc, err := kncloudevents.RetryConfigFromDeliverySpec(spec)
			if err != nil {
				t.Fatal(err)
			}
			d, _ := broker.ParseDuration(delay)
			ours := broker.Delivery{Retry: 10, BackoffPolicy: broker.BackoffPolicy(policy), BackoffDelay: d}
			for n := 1; n <= 10; n++ {
				// go-retryablehttp passes the zero-based retry index.
				if got, want := ours.Backoff(n), rc.Backoff(n-1, nil); got != want {
					t.Errorf("%s %s retry %d: embedded broker waits %v, Knative %v", policy, delay, n, got, want)
				}
			}
		}
	}
	// Without both policy and delay, Knative retries at once.
	retry := int32(3)
	rc, err := kncloudevents.RetryConfigFromDeliverySpec(eventingduckv1.DeliverySpec{Retry: &retry})
	if err != nil {
		t.Fatal(err)
	}
	if w := rc.Backoff(1, nil); w != 0 || (broker.Delivery{Retry: 3}).Backoff(2) != 0 {
		t.Errorf("no backoff: Knative waits %v", w)
	}
}

// TestCrossCheck_DestinationRefs: the embedded broker refuses a subscriber
// or dead-letter sink ref that Knative's webhook refuses for a missing
// name, apiVersion or kind (KReference.Validate), and loads one it takes.
// The one difference is deliberate: beside a uri, Knative's webhook does
// not check the ref, which then resolves to no address on a cluster (the
// Trigger is never ready); the embedded broker refuses it at load.
func TestCrossCheck_DestinationRefs(t *testing.T) {
	ctx := webhookContext(t)
	const full = "apiVersion: serving.knative.dev/v1\n  kind: Service\n  name: s\n"
	for name, tc := range map[string]struct {
		ref  string // the ref's fields, each line indented by two
		uri  string // beside the ref
		ours bool   // the embedded broker loads it
	}{
		"full":               {ref: full, ours: true},
		"name only":          {ref: "name: s\n"},
		"no kind":            {ref: "apiVersion: serving.knative.dev/v1\n  name: s\n"},
		"no apiVersion":      {ref: "kind: Service\n  name: s\n"},
		"no name":            {ref: "apiVersion: serving.knative.dev/v1\n  kind: Service\n"},
		"full beside uri":    {ref: full, uri: "/hook", ours: true},
		"name only with uri": {ref: "name: s\n", uri: "/hook"},
	} {
		for _, at := range []string{"subscriber", "deadLetterSink"} {
			t.Run(name+"/"+at, func(t *testing.T) {
				dest := "ref:\n  " + tc.ref
				if tc.uri != "" {
					dest += "uri: " + tc.uri + "\n"
				}
				var spec string
				if at == "subscriber" {
					spec = "subscriber:\n" + indent(dest)
				} else {
					spec = "subscriber:\n  uri: http://sub.test/\ndelivery:\n  deadLetterSink:\n" + indent(indent(dest))
				}
				doc := "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  namespace: dovewarden\nspec:\n  broker: dovewarden\n" + indent(spec)
				var tr eventingv1.Trigger
				if err := yaml.UnmarshalStrict([]byte(doc), &tr); err != nil {
					t.Fatal(err)
				}
				tr.SetDefaults(ctx)
				fe := tr.Validate(ctx)
				_, err := broker.Load(fstest.MapFS{"t.yaml": {Data: []byte("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: dovewarden\n---\n" + doc)}})
				if (err == nil) != tc.ours {
					t.Errorf("embedded broker: %v (want loaded %v); Knative: %v", err, tc.ours, fe)
				}
				if tc.uri == "" && (fe == nil) != (err == nil) {
					t.Errorf("embedded broker: %v; Knative: %v", err, fe)
				}
			})
		}
	}
}
