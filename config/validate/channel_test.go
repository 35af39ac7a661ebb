package validate

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.uber.org/zap"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	"knative.dev/eventing/pkg/channel"
	"knative.dev/eventing/pkg/channel/fanout"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	dwsink "github.com/dovewarden/dovewarden-knative/pkg/sink"
)

// TestBroker_ChannelAnswersBeforeItsSubscribers: the shipped Broker's
// channel (Knative's in-memory one, of the channel-based class) answers
// the Broker's ingress once it holds an event, not once every Trigger's
// subscriber has: by default it waits for them (the broker filter, and
// through it the sync function), and every hop passes the caller's
// request on. Ingest, sending with its --send-budget, then waited for a
// dsync: past the budget it answered Dovecot 503, and its cut connection
// cancelled the dsync's request too. Knative copies a Broker's
// messaging.knative.dev annotations onto its channel (the broker
// reconciler), whose dispatcher reads async-handler from them; the
// channel here is Knative's own fanout handler, so configured.
func TestBroker_ChannelAnswersBeforeItsSubscribers(t *testing.T) {
	b, _ := shippedBroker(t)
	async := false // the dispatcher's default
	if v, ok := b.Annotations[messagingv1.AsyncHandlerAnnotation]; ok {
		async, _ = strconv.ParseBool(v)
	}
	env, _ := containerEnv(t, serviceNamed(t, "dovewarden-ingest"))
	budget, err := time.ParseDuration(env["DOVEWARDEN_SEND_BUDGET"])
	if err != nil {
		t.Fatalf("ingest's DOVEWARDEN_SEND_BUDGET: %v", err)
	}
	cut := make(chan bool, 1)
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // a dsync
		case <-time.After(10 * budget):
			cut <- false
		case <-r.Context().Done():
			cut <- true
		}
	}))
	defer sub.Close()
	u, err := apis.ParseURL(sub.URL)
	if err != nil {
		t.Fatal(err)
	}
	h, err := fanout.NewFanoutEventHandler(zap.NewNop(), fanout.Config{AsyncHandler: async,
		Subscriptions: []fanout.Subscription{{Subscriber: duckv1.Addressable{URL: u}}}},
		nil, nil, nil, kncloudevents.NewDispatcher(eventingtls.NewDefaultClientConfig(), nil), nil, nil,
		channel.ResolveChannelFromPath(channel.ParseChannelFromPath))
	if err != nil {
		t.Fatal(err)
	}
	imc := httptest.NewServer(h)
	defer imc.Close()
	snd, err := dwsink.New(dwsink.Options{URL: imc.URL + "/dovewarden/dovewarden-kne-trigger", Budget: budget, Retries: 3, Backoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ev := cloudevents.NewEvent()
	ev.SetID("1")
	ev.SetSource("mail-a.example.org")
	ev.SetType("org.dovewarden.mailbox.changed")
	if err := snd.Send(context.Background(), ev); err != nil {
		t.Errorf("ingest's send with its budget of %v: %v (async-handler %v): the channel waits for the subscriber", budget, err, async)
	}
	if <-cut {
		t.Error("the subscriber's request was cancelled: a dsync cut short by ingest's budget")
	}
}
