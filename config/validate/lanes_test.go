package validate

import (
	"context"
	"sort"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.uber.org/zap"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventfilter/attributes"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"
)

// triggerFilter builds the filter a Knative Broker applies for tr: the
// filters list when set (it wins), else filter.attributes.
func triggerFilter(tr *eventingv1.Trigger) eventfilter.Filter {
	if len(tr.Spec.Filters) > 0 {
		return subscriptionsapi.CreateSubscriptionsAPIFilters(zap.NewNop(), tr.Spec.Filters)
	}
	if tr.Spec.Filter != nil {
		return attributes.NewAttributesFilter(tr.Spec.Filter.Attributes)
	}
	return subscriptionsapi.NewNoFilter()
}

func event(typ, priority string) cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID("1")
	ev.SetSource("mail-a.test")
	ev.SetType(typ)
	ev.SetSubject("u1")
	if priority != "" {
		ev.SetExtension("priority", priority)
	}
	return ev
}

func withSource(ev cloudevents.Event, source string) cloudevents.Event {
	ev.SetSource(source)
	return ev
}

// TestTriggers_Lanes routes sample events through the real Trigger manifests
// with Knative's own filter code: every change reaches exactly one sync lane
// (overlapping Triggers would deliver it twice), new mail the fast one.
func TestTriggers_Lanes(t *testing.T) {
	filters := map[string]eventfilter.Filter{}
	for _, d := range loadManifests(t) {
		if tr, ok := d.obj.(*eventingv1.Trigger); ok {
			filters[tr.Name] = triggerFilter(tr)
		}
	}
	const (
		changed   = "org.dovewarden.mailbox.changed"
		requested = "org.dovewarden.replication.requested"
	)
	for name, tc := range map[string]struct {
		ev   cloudevents.Event
		want string
	}{
		"new mail":             {event(changed, "high"), "sync-high"},
		"flag change":          {event(changed, "low"), "sync-low"},
		"change, no priority":  {event(changed, ""), "sync-low"},
		"change, odd priority": {event(changed, "urgent"), "sync-low"},
		"admin request, high":  {event(requested, "high"), "sync-high"},
		"sweep's request, low": {event(requested, "low"), "sync-low"},
		"sweep":                {event("org.dovewarden.sweep.requested", "low"), "sweep"},
		"our PingSource":       {withSource(event("dev.knative.sources.ping", "low"), "/apis/v1/namespaces/dovewarden/pingsources/dovewarden-sweep"), "sweep"},
		"our retry PingSource": {withSource(event("dev.knative.sources.ping", "low"), "/apis/v1/namespaces/dovewarden/pingsources/dovewarden-retry"), "sweep"},
		"another PingSource":   {withSource(event("dev.knative.sources.ping", "low"), "/apis/v1/namespaces/dovewarden/pingsources/backup"), ""},
		"failure":              {event("org.dovewarden.replication.failed", "high"), "replication-failed-alert"},
		"success":              {event("org.dovewarden.replication.succeeded", "high"), ""},
		"someone else's event": {event("com.example.other", "high"), ""},
	} {
		t.Run(name, func(t *testing.T) {
			var got []string
			for trigger, f := range filters {
				if f.Filter(context.Background(), tc.ev) == eventfilter.PassFilter {
					got = append(got, trigger)
				}
			}
			sort.Strings(got)
			if strings.Join(got, ",") != tc.want {
				t.Errorf("delivered to [%s], want [%s]", strings.Join(got, ","), tc.want)
			}
		})
	}
}
