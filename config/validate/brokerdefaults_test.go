package validate

import (
	"testing"
	"testing/fstest"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	eventingconfig "knative.dev/eventing/pkg/apis/config"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
	"sigs.k8s.io/yaml"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
)

// stockBrokerDefaults is default-br-config of the config-br-defaults
// ConfigMap Knative Eventing v0.50 installs
// (config/core/configmaps/default-broker.yaml).
const stockBrokerDefaults = `
clusterDefault:
  brokerClass: MTChannelBasedBroker
  apiVersion: v1
  kind: ConfigMap
  name: config-br-default-channel
  namespace: knative-eventing
  delivery:
    retry: 10
    backoffPolicy: exponential
    backoffDelay: PT0.2S
`

// TestCrossCheck_BrokerDefaultDelivery: a Trigger without delivery retries
// as Knative's Broker webhook, defaulting its Broker from the stock
// config-br-defaults, has it retry: with the default delivery when the
// Broker sets none, with the Broker's own (even an empty one) otherwise.
func TestCrossCheck_BrokerDefaultDelivery(t *testing.T) {
	defaults, err := eventingconfig.NewDefaultsConfigFromMap(map[string]string{"default-br-config": stockBrokerDefaults})
	if err != nil {
		t.Fatal(err)
	}
	ctx := eventingconfig.ToContext(webhookContext(t), &eventingconfig.Config{Defaults: defaults})
	const trigger = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: dovewarden\n  subscriber:\n    uri: http://sub.test/\n"
	for name, spec := range map[string]string{
		"no spec":        "",
		"no delivery":    "spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: config-br-default-channel\n    namespace: knative-eventing\n",
		"empty delivery": "spec:\n  delivery: {}\n",
		"own delivery":   "spec:\n  delivery:\n    retry: 2\n    backoffPolicy: linear\n    backoffDelay: PT1S\n",
	} {
		t.Run(name, func(t *testing.T) {
			doc := "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: dovewarden\n" + spec
			var b eventingv1.Broker
			if err := yaml.UnmarshalStrict([]byte(doc), &b); err != nil {
				t.Fatal(err)
			}
			b.SetDefaults(apis.WithinParent(ctx, metav1.ObjectMeta{Namespace: "dovewarden"}))
			if fe := b.Validate(ctx); fe != nil {
				t.Fatalf("Knative rejects the Broker: %v", fe)
			}
			var delivery eventingduckv1.DeliverySpec
			if b.Spec.Delivery != nil {
				delivery = *b.Spec.Delivery
			}
			rc, err := kncloudevents.RetryConfigFromDeliverySpec(delivery)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := broker.Load(fstest.MapFS{"t.yaml": {Data: []byte(doc + "---\n" + trigger)}})
			if err != nil {
				t.Fatal(err)
			}
			ours := cfg.Triggers[0].Delivery
			if ours.Retry != rc.RetryMax {
				t.Errorf("embedded broker retries %d times, Knative %d", ours.Retry, rc.RetryMax)
			}
			for n := 1; n <= rc.RetryMax; n++ {
				if got, want := ours.Backoff(n), rc.Backoff(n-1, nil); got != want {
					t.Errorf("retry %d: embedded broker waits %v, Knative %v", n, got, want)
				}
			}
		})
	}
}
