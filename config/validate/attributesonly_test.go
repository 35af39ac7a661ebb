package validate

import (
	"regexp"
	"sort"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/eventing/pkg/eventfilter/attributes"

	"github.com/dovewarden/dovewarden-knative/pkg/contract"
)

// numberWords are the counts docs/deployment.md may spell out.
var numberWords = map[string]int{"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}

// splitSweep is docs/deployment.md's instruction for a Broker that
// supports only filter.attributes: into how many Triggers the sweep
// Trigger is split, and the rest of that paragraph.
var splitSweep = regexp.MustCompile(`split the sweep Trigger in (\w+):(.*)$`)

// TestDocs_AttributesOnlySweepTriggers: a Broker that supports only
// filter.attributes (the RabbitMQ Broker) takes one exact value per
// attribute and ANDs them, so the shipped sweep Trigger's filters become
// one Trigger for sweep.requested and one for each shipped PingSource, on
// its type and full source. Those Triggers, as Knative's attributes filter
// applies them, pass each event the sweep Trigger passes exactly once,
// and nothing else; docs/deployment.md must ask for as many and name
// every PingSource.
func TestDocs_AttributesOnlySweepTriggers(t *testing.T) {
	ctx := webhookContext(t)
	var sweep *eventingv1.Trigger
	for _, d := range loadManifests(t) {
		if tr, ok := d.obj.(*eventingv1.Trigger); ok && tr.Name == "sweep" {
			sweep = tr
		}
	}
	if sweep == nil {
		t.Fatal("no Trigger sweep in config/broker")
	}
	pings := shippedPingSources(t)
	names := make([]string, 0, len(pings))
	for name := range pings {
		names = append(names, name)
	}
	sort.Strings(names)

	wanted := []eventingv1.TriggerFilterAttributes{{"type": contract.TypeSweepRequested}}
	for _, name := range names {
		wanted = append(wanted, eventingv1.TriggerFilterAttributes{
			"type":   sourcesv1.PingSourceEventType,
			"source": sourcesv1.PingSourceSource(namespace, name),
		})
	}
	var filters []func(cloudevents.Event) bool
	for i, attrs := range wanted {
		tr := &eventingv1.Trigger{
			ObjectMeta: metav1.ObjectMeta{Name: "sweep-" + string(rune('a'+i)), Namespace: namespace},
			Spec: eventingv1.TriggerSpec{
				Broker:     "dovewarden",
				Filter:     &eventingv1.TriggerFilter{Attributes: attrs},
				Subscriber: duckv1.Destination{Ref: sweep.Spec.Subscriber.Ref},
			},
		}
		tr.SetDefaults(apis.WithinParent(ctx, metav1.ObjectMeta{Namespace: namespace}))
		if fe := tr.Validate(ctx); fe != nil {
			t.Fatalf("Knative refuses the attributes-only Trigger %v: %v", attrs, fe)
		}
		f := attributes.NewAttributesFilter(attrs)
		filters = append(filters, func(ev cloudevents.Event) bool { return knativePasses(f, ev) })
	}

	events := corpus()
	for _, name := range names {
		events = append(events, pingEvent(t, pings[name]))
	}
	shipped := triggerFilter(sweep)
	passed := 0
	for _, ev := range events {
		n := 0
		for _, f := range filters {
			if f(ev) {
				n++
			}
		}
		want := 0
		if knativePasses(shipped, ev) {
			want = 1
			passed++
		}
		if n != want {
			t.Errorf("event type=%q source=%q: %d attributes-only Triggers pass it, the sweep Trigger %d", ev.Type(), ev.Source(), n, want)
		}
	}
	if passed == 0 {
		t.Fatal("the sweep Trigger passes no event of the corpus")
	}

	var m []string
	for _, para := range strings.Split(string(deploymentDoc(t)), "\n\n") {
		if m = splitSweep.FindStringSubmatch(strings.Join(strings.Fields(para), " ")); m != nil {
			break
		}
	}
	if m == nil {
		t.Fatal("docs/deployment.md does not say how to split the sweep Trigger for a Broker with filter.attributes only")
	}
	if got, ok := numberWords[m[1]]; !ok || got != len(wanted) {
		t.Errorf("docs/deployment.md splits the sweep Trigger in %q, want %d Triggers: one for %s and one for each PingSource %v (filter.attributes takes one source a Trigger)",
			m[1], len(wanted), contract.TypeSweepRequested, names)
	}
	for _, name := range names {
		if !strings.Contains(m[2], "/pingsources/"+name+"`") {
			t.Errorf("docs/deployment.md's split of the sweep Trigger does not give PingSource %s's source", name)
		}
	}
}
