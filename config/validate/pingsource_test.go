package validate

import (
	"encoding/base64"
	"sort"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"

	"github.com/dovewarden/dovewarden-knative/pkg/contract"
)

// namespace is where docs/deployment.md applies the manifests.
const namespace = "dovewarden"

// shippedPingSources are config/knative/pingsource.yaml's PingSources by
// name, as the webhook stores them after kubectl apply -n dovewarden: the
// hourly sweep and the retry sweep, each with the reason sync reads.
func shippedPingSources(t *testing.T) map[string]*sourcesv1.PingSource {
	t.Helper()
	found := map[string]*sourcesv1.PingSource{}
	for _, d := range loadManifests(t) {
		if ps, ok := d.obj.(*sourcesv1.PingSource); ok {
			ps.SetNamespace(namespace)
			ps.SetDefaults(apis.WithinParent(webhookContext(t), metav1.ObjectMeta{Namespace: namespace}))
			found[ps.Name] = ps
		}
	}
	if len(found) != len(pingReasons) {
		t.Fatalf("%d PingSources in the manifests, want %d", len(found), len(pingReasons))
	}
	return found
}

// pingReasons are the shipped PingSources and the sweep each asks for.
var pingReasons = map[string]string{"dovewarden-sweep": "schedule", "dovewarden-retry": "retry"}

// shippedPingSource is the shipped PingSource named name.
func shippedPingSource(t *testing.T, name string) *sourcesv1.PingSource {
	t.Helper()
	ps := shippedPingSources(t)[name]
	if ps == nil {
		t.Fatalf("no PingSource %s in the manifests", name)
	}
	return ps
}

// pingEvent is the event Knative's PingSource adapter sends for ps: as
// knative.dev/eventing/pkg/adapter/mtping makeEvent (unexported) builds it,
// with the id cronTick gives each tick. The type and source are Knative's;
// the manifest sets only extensions (ceOverrides) and the data.
func pingEvent(t *testing.T, ps *sourcesv1.PingSource) cloudevents.Event {
	t.Helper()
	ev := cloudevents.NewEvent()
	ev.SetID("3f2a9c4e-0b1d-4e6f-8a7b-9c0d1e2f3a4b")
	ev.SetType(sourcesv1.PingSourceEventType)
	ev.SetSource(sourcesv1.PingSourceSource(ps.Namespace, ps.Name))
	if o := ps.Spec.CloudEventOverrides; o != nil {
		for k, v := range o.Extensions {
			ev.SetExtension(k, v)
		}
	}
	var data []byte
	if ps.Spec.DataBase64 != "" {
		var err error
		if data, err = base64.StdEncoding.DecodeString(ps.Spec.DataBase64); err != nil {
			t.Fatal(err)
		}
	} else if ps.Spec.Data != "" {
		data = []byte(ps.Spec.Data)
	}
	if data != nil {
		if err := ev.SetData(ps.Spec.ContentType, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := ev.Validate(); err != nil {
		t.Fatal(err)
	}
	return ev
}

// routedBy returns the shipped Triggers whose filters, as Knative's broker
// applies them, pass ev.
func routedBy(t *testing.T, ev cloudevents.Event) []*eventingv1.Trigger {
	t.Helper()
	var got []*eventingv1.Trigger
	for _, d := range loadManifests(t) {
		if tr, ok := d.obj.(*eventingv1.Trigger); ok && knativePasses(triggerFilter(tr), ev) {
			got = append(got, tr)
		}
	}
	return got
}

func triggerNames(trs []*eventingv1.Trigger) string {
	var out []string
	for _, tr := range trs {
		out = append(out, tr.Name)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// TestPingSource_ReachesTheSweep: the event each shipped PingSource sends
// passes exactly the sweep Trigger of the shipped Broker, as Knative's
// broker filter decides, and goes to the low-priority sync Service, which
// reads it as a request for a new sweep of its reason.
func TestPingSource_ReachesTheSweep(t *testing.T) {
	for name, ps := range shippedPingSources(t) {
		if ref := ps.Spec.Sink.Ref; ref == nil || ref.Kind != "Broker" || ref.Name != "dovewarden" {
			t.Fatalf("PingSource %s sink %+v, want the Broker dovewarden", name, ps.Spec.Sink)
		}
		ev := pingEvent(t, ps)
		got := routedBy(t, ev)
		if triggerNames(got) != "sweep" {
			t.Fatalf("PingSource event (type %s, source %s) passes Triggers [%s], want [sweep]", ev.Type(), ev.Source(), triggerNames(got))
		}
		tr := got[0]
		if tr.Spec.Broker != "dovewarden" || tr.Spec.Subscriber.Ref == nil || tr.Spec.Subscriber.Ref.Name != "dovewarden-sync-low" {
			t.Errorf("sweep Trigger: broker %q, subscriber %+v", tr.Spec.Broker, tr.Spec.Subscriber)
		}
		d, err := contract.ToSweep(ev)
		if err != nil || d != (contract.SweepRequested{Reason: pingReasons[name]}) {
			t.Errorf("sync reads %s's event as %+v, %v; want a new sweep for reason %s", name, d, err, pingReasons[name])
		}
	}
}

// TestPingSource_OthersStartNoSweep: a PingSource of another name sending
// to the same Broker passes no Trigger; the shipped one does from any
// namespace.
func TestPingSource_OthersStartNoSweep(t *testing.T) {
	for _, name := range []string{"backup", "x-dovewarden-sweep", "dovewarden-sweep-2", "dovewarden", "x-dovewarden-retry", "dovewarden-retry-2"} {
		ps := shippedPingSource(t, "dovewarden-sweep")
		ps.Name = name
		if got := routedBy(t, pingEvent(t, ps)); len(got) != 0 {
			t.Errorf("PingSource %s passes Triggers [%s], want none", name, triggerNames(got))
		}
	}
	ps := shippedPingSource(t, "dovewarden-retry")
	ps.Namespace = "mail"
	if got := routedBy(t, pingEvent(t, ps)); triggerNames(got) != "sweep" {
		t.Errorf("in namespace mail: passes Triggers [%s], want [sweep]", triggerNames(got))
	}
}
