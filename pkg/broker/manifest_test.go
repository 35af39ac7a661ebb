package broker

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"
)

func TestLoad_ErrorsNameFileTriggerAndSetting(t *testing.T) {
	sub := "  subscriber:\n    uri: http://127.0.0.1:1/\n"
	for name, tc := range map[string]struct {
		spec string
		want string
	}{
		"unknown dialect":     {"  filters:\n  - exakt:\n      type: a\n" + sub, `unknown field "exakt"`},
		"nested unknown":      {"  filters:\n  - all:\n    - regex:\n        type: a\n" + sub, `unknown field "regex"`},
		"two dialects":        {"  filters:\n  - exact:\n      type: a\n    prefix:\n      type: b\n" + sub, "[0]: more than one dialect"},
		"no dialect":          {"  filters:\n  - {}\n" + sub, "[0]: no filter dialect"},
		"empty not":           {"  filters:\n  - not: {}\n" + sub, "[0].not: no filter dialect"},
		"empty exact value":   {"  filters:\n  - exact:\n      type: \"\"\n" + sub, "[0].exact: attribute type: empty value"},
		"bad attribute name":  {"  filters:\n  - prefix:\n      Type: a\n" + sub, `attribute name "Type"`},
		"bad attributes name": {"  filter:\n    attributes:\n      my-ext: a\n" + sub, `attribute name "my-ext"`},
		"bad cesql":           {"  filters:\n  - cesql: \"type = \"\n" + sub, "[0].cesql"},
		"non-boolean cesql":   {"  filters:\n  - cesql: \"'abc'\"\n" + sub, "not a boolean"},
		"bare attribute":      {"  filters:\n  - cesql: \"priority\"\n" + sub, "not a boolean"},
		"string function":     {"  filters:\n  - cesql: \"CONCAT(type, region)\"\n" + sub, "not a boolean"},
		"arithmetic":          {"  filters:\n  - cesql: \"INT(region) + 1\"\n" + sub, "not a boolean"},
		"bad backoffDelay":    {sub + "  delivery:\n    backoffPolicy: linear\n    backoffDelay: 0.5s\n", "spec.delivery: backoffDelay"},
		"negative retry":      {sub + "  delivery:\n    retry: -1\n", "retry -1"},
		"bad policy":          {sub + "  delivery:\n    backoffPolicy: fibonacci\n", `backoffPolicy "fibonacci"`},
		"zero timeout":        {sub + "  delivery:\n    timeout: PT0S\n", "timeout"},
		"unsupported field":   {sub + "  delivery:\n    retryAfterMax: PT1S\n", `unknown field "retryAfterMax"`},
		"bad format":          {sub + "  delivery:\n    format: xml\n", `format "xml"`},
		"no subscriber":       {"  filter: {}\n", "spec.subscriber: neither ref nor uri"},
		"relative uri":        {"  subscriber:\n    uri: /x\n", "want an absolute http"},
		"bad dead letter":     {sub + "  delivery:\n    deadLetterSink:\n      ref:\n        kind: Service\n", "deadLetterSink: ref without a name"},
		"subscriber ref without kind": {"  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      name: s\n",
			"spec.subscriber: ref s: no kind"},
		"subscriber ref name only": {"  subscriber:\n    ref:\n      name: s\n", "spec.subscriber: ref s: no apiVersion and no kind"},
		"dead letter ref without apiVersion": {sub + "  delivery:\n    deadLetterSink:\n      ref:\n        kind: Service\n        name: d\n",
			"spec.delivery: deadLetterSink: ref d: no apiVersion"},
		"ref beside a uri without kind": {"  subscriber:\n    ref:\n      apiVersion: v1\n      name: s\n    uri: /hook\n", "spec.subscriber: ref s: no kind"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(manifests(brokerDoc, trigger("t1", tc.spec)))
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, want := range []string{"triggers.yaml", "Trigger t1", tc.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// A manifest file over MaxManifestFile, or one that is no regular file
// (a named pipe blocked the start), is refused, naming it; a symlink to a
// manifest, as in a mounted ConfigMap, is read.
func TestLoad_FileBounds(t *testing.T) {
	fsys := manifests(brokerDoc, trigger("t1", "  subscriber:\n    uri: http://127.0.0.1:1/\n"))
	fsys["zz-big.yaml"] = &fstest.MapFile{Data: []byte(strings.Repeat("# padding\n", MaxManifestFile/10+1))}
	if _, err := Load(fsys); err == nil || !strings.Contains(err.Error(), "zz-big.yaml: larger than 4194304 bytes") {
		t.Errorf("a file over the bound: err = %v", err)
	}
	fsys["zz-big.yaml"] = &fstest.MapFile{Data: []byte(strings.Repeat("# padding\n", MaxManifestFile/10))}
	if _, err := Load(fsys); err != nil {
		t.Errorf("a file at %d bytes: %v", len(fsys["zz-big.yaml"].Data), err)
	}

	dir, elsewhere := t.TempDir(), t.TempDir()
	target := filepath.Join(elsewhere, "triggers")
	if err := os.WriteFile(target, []byte(brokerDoc+"---\n"+trigger("t1", "  subscriber:\n    uri: http://127.0.0.1:1/\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "link.yaml")); err != nil {
		t.Fatal(err)
	}
	if cfg, err := Load(os.DirFS(dir)); err != nil || len(cfg.Triggers) != 1 {
		t.Errorf("a symlink to a manifest: %v", err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(os.DirFS(dir)); err == nil || !strings.Contains(err.Error(), "pipe.yaml: not a regular file") {
		t.Errorf("a named pipe: err = %v", err)
	}
}

// A Broker without a name is refused: loaded, every Trigger was skipped
// as another Broker's, and the ingress accepted events it routed nowhere.
func TestLoad_BrokerWithoutName(t *testing.T) {
	_, err := Load(manifests("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  nme: b\n",
		trigger("t1", "  subscriber:\n    uri: http://127.0.0.1:1/\n")))
	if err == nil || !strings.Contains(err.Error(), "triggers.yaml: Broker: no metadata.name") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoad_BadAnnotation(t *testing.T) {
	annotated := func(key, value string) string {
		return strings.Replace(trigger("t1", "  subscriber:\n    uri: http://127.0.0.1:1/\n"),
			"  name: t1\n", "  name: t1\n  annotations:\n    "+key+": \""+value+"\"\n", 1)
	}
	for _, tc := range []struct{ key, value string }{
		{AnnotationWorkers, "0"},
		// As --workers: each worker is a goroutine, and a million of
		// them (two with a dead-letter sink) take gigabytes.
		{AnnotationWorkers, "10001"},
		{AnnotationQueueSize, "0"},
		{AnnotationQueueSize, "1000001"},
	} {
		_, err := Load(manifests(brokerDoc, annotated(tc.key, tc.value)))
		if err == nil || !strings.Contains(err.Error(), "Trigger t1: annotation "+tc.key) {
			t.Errorf("%s: %s: err = %v", tc.key, tc.value, err)
		}
	}
	for _, tc := range []struct{ key, value string }{{AnnotationWorkers, "10000"}, {AnnotationQueueSize, "1000000"}} {
		if _, err := Load(manifests(brokerDoc, annotated(tc.key, tc.value))); err != nil {
			t.Errorf("%s: %s: %v", tc.key, tc.value, err)
		}
	}
}

func TestLoad_DeliveryAndDocuments(t *testing.T) {
	broker := brokerDoc + `spec:
  delivery:
    retry: 2
    backoffPolicy: linear
    backoffDelay: PT1S
    format: json
    deadLetterSink:
      uri: http://127.0.0.1:1/dls
`
	service := "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: x\nspec: {}\n"
	inherits := trigger("inherits", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n")
	own := trigger("own", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n  delivery:\n    retry: 7\n    timeout: PT30S\n    format: json\n")
	other := strings.Replace(trigger("other", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n"), "broker: b", "broker: elsewhere", 1)
	sized := strings.Replace(trigger("sized", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n"), "  name: sized\n",
		"  name: sized\n  annotations:\n    dovewarden.org/workers: \"3\"\n    dovewarden.org/queue-size: \"17\"\n", 1)
	fsys := fstest.MapFS{
		"a-broker.yaml": {Data: []byte("# comment only\n---\n" + broker + "---\n" + service)},
		"b.yml":         {Data: []byte(inherits + "\n---\n" + own + "\n---\n" + other + "\n---\n" + sized)},
		"README.md":     {Data: []byte("not a manifest")},
	}
	cfg, err := Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Triggers) != 3 || len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "Trigger other") {
		t.Fatalf("triggers %d, warnings %q", len(cfg.Triggers), cfg.Warnings)
	}
	in, ow, sz := cfg.Triggers[0], cfg.Triggers[1], cfg.Triggers[2]
	if in.Delivery.Retry != 2 || in.Delivery.BackoffPolicy != BackoffLinear || in.Delivery.BackoffDelay != time.Second ||
		in.Delivery.DeadLetterSink == nil || in.Delivery.DeadLetterSink.URI != "http://127.0.0.1:1/dls" {
		t.Errorf("inherited delivery %+v", in.Delivery)
	}
	// Knative's filter sends in a Trigger's own delivery.format only
	// (filter_handler.go); the Broker's applies to its channel, not to
	// the subscriber.
	if in.Delivery.Structured || !ow.Delivery.Structured {
		t.Errorf("format: inherited structured=%v, own structured=%v; want binary, json", in.Delivery.Structured, ow.Delivery.Structured)
	}
	// A Trigger's delivery replaces the Broker's retry, backoff and
	// timeout (no backoff here); without a DLS of its own it takes the
	// Broker's, as in Knative.
	if ow.Delivery.Retry != 7 || ow.Delivery.BackoffPolicy != "" || ow.Delivery.Timeout != 30*time.Second ||
		ow.Delivery.DeadLetterSink == nil || ow.Delivery.DeadLetterSink.URI != "http://127.0.0.1:1/dls" {
		t.Errorf("own delivery %+v", ow.Delivery)
	}
	if sz.Workers != 3 || sz.QueueSize != 17 {
		t.Errorf("sized %d/%d", sz.Workers, sz.QueueSize)
	}
}

// Documents are split as kubectl apply splits them: a separator may carry
// blanks or a comment after it, and files saved with CRLF line endings
// load the same. A regular expression here once left such files with
// their first document only: the Broker and no Trigger, routing nothing.
func TestLoad_SplitsDocumentsAsKubectl(t *testing.T) {
	a := trigger("a", "  subscriber:\n    uri: http://127.0.0.1:1/\n")
	bb := trigger("bb", "  subscriber:\n    uri: http://127.0.0.1:1/\n")
	for name, file := range map[string]string{
		"comment":  brokerDoc + "--- # the first Trigger\n" + a + "---\t\n" + bb,
		"crlf":     strings.ReplaceAll(brokerDoc+"---\n"+a+"---  \n"+bb, "\n", "\r\n"),
		"no final": brokerDoc + "---\n" + a + "---\n" + strings.TrimSuffix(bb, "\n"),
		"empty":    "---\n---\n" + brokerDoc + "---\n\n---\n" + a + "---\n" + bb + "---\n",
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := Load(fstest.MapFS{"all.yaml": {Data: []byte(file)}})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tr := range cfg.Triggers {
				got = append(got, tr.Name)
			}
			if cfg.Broker != "b" || strings.Join(got, ",") != "a,bb" {
				t.Errorf("broker %q, Triggers %q; want b and a,bb", cfg.Broker, got)
			}
		})
	}
	// kubectl refuses anything but a comment after the separator.
	_, err := Load(fstest.MapFS{"all.yaml": {Data: []byte(brokerDoc + "--- " + a)}})
	if err == nil || !strings.Contains(err.Error(), "all.yaml: at the end of document 1") || !strings.Contains(err.Error(), "separator") {
		t.Errorf("content after the separator: err = %v", err)
	}
}

func TestLoad_Refuses(t *testing.T) {
	t.Run("no files", func(t *testing.T) {
		if _, err := Load(fstest.MapFS{"x.txt": {Data: []byte("x")}}); err == nil {
			t.Error("want an error")
		}
	})
	t.Run("two brokers", func(t *testing.T) {
		if _, err := Load(manifests(brokerDoc, strings.Replace(brokerDoc, "name: b", "name: c", 1))); err == nil {
			t.Error("want an error")
		}
	})
	t.Run("duplicate trigger", func(t *testing.T) {
		tr := trigger("t1", "  subscriber:\n    uri: http://127.0.0.1:1/\n")
		if _, err := Load(manifests(brokerDoc, tr, tr)); err == nil || !strings.Contains(err.Error(), "Trigger t1") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("bad YAML", func(t *testing.T) {
		if _, err := Load(manifests(brokerDoc, "kind: [")); err == nil || !strings.Contains(err.Error(), "triggers.yaml: document 2") {
			t.Errorf("err = %v", err)
		}
	})
}

// TestLoad_RefWithAbsoluteURIIsRefused: Knative's webhook refuses a
// Destination whose uri beside a ref is absolute (a uri there is a path
// resolved against the ref's address), so such a subscriber or
// dead-letter sink is a load error here too, naming it without its
// password, and not a route to the uri (a --subscriber mapping) or to the
// ref alone (an in-process handler). A relative uri beside a ref loads.
func TestLoad_RefWithAbsoluteURIIsRefused(t *testing.T) {
	for name, spec := range map[string]string{
		"subscriber":     "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n    uri: http://u:hunter2@other.example/x\n",
		"deadLetterSink": "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: d\n      uri: https://u:hunter2@other.example/x\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(manifests(brokerDoc, trigger("t1", spec)))
			if err == nil || !strings.Contains(err.Error(), "Trigger t1") || !strings.Contains(err.Error(), name) ||
				!strings.Contains(err.Error(), "absolute") || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("err = %v; want a refusal of the absolute uri beside the ref, naming %s, without the password", err, name)
			}
		})
	}
	cfg, err := Load(manifests(brokerDoc, trigger("t1", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n    uri: /hook?x=1\n")))
	if err != nil {
		t.Fatalf("a relative uri beside a ref: %v", err)
	}
	if d := cfg.Triggers[0].Subscriber; d.Ref != "s" || d.URI != "/hook?x=1" {
		t.Errorf("subscriber %+v", d)
	}
}

func TestBackoff_KnativeFormula(t *testing.T) {
	exp := Delivery{BackoffPolicy: BackoffExponential, BackoffDelay: 200 * time.Millisecond}
	lin := Delivery{BackoffPolicy: BackoffLinear, BackoffDelay: time.Second}
	none := Delivery{Retry: 3}
	for n, want := range map[int][3]time.Duration{
		1: {200 * time.Millisecond, 0, 0},
		2: {400 * time.Millisecond, time.Second, 0},
		3: {800 * time.Millisecond, 2 * time.Second, 0},
		4: {1600 * time.Millisecond, 3 * time.Second, 0},
	} {
		got := [3]time.Duration{exp.Backoff(n), lin.Backoff(n), none.Backoff(n)}
		if got != want {
			t.Errorf("retry %d: got %v, want %v", n, got, want)
		}
	}
}

// TestBackoff_HugeValuesSaturate: a wait past what a time.Duration holds
// (a long backoffDelay doubled by many retries, or a large multiple of
// it) is the longest wait, not a product wrapped round to a negative
// wait, which the lane's timer fires at once.
func TestBackoff_HugeValuesSaturate(t *testing.T) {
	for _, delay := range []time.Duration{time.Nanosecond, 100 * time.Millisecond, time.Second, time.Hour, 1000 * 24 * time.Hour} {
		for _, policy := range []BackoffPolicy{BackoffExponential, BackoffLinear} {
			d := Delivery{Retry: math.MaxInt32, BackoffPolicy: policy, BackoffDelay: delay}
			prev := d.Backoff(1)
			for _, n := range []int{2, 3, 8, 9, 30, 34, 35, 36, 40, 41, 62, 63, 64, 65, 100, 200, 1000, 1 << 20, math.MaxInt32} {
				got := d.Backoff(n)
				if got <= 0 || got < prev {
					t.Errorf("%s %v: retry %d waits %v after %v for the retry before it", policy, delay, n, got, prev)
				}
				prev = got
			}
		}
	}
	if got := (Delivery{BackoffPolicy: BackoffExponential, BackoffDelay: time.Second}).Backoff(35); got != math.MaxInt64 {
		t.Errorf("1s doubled 34 times waits %v; want the longest wait, %v", got, time.Duration(math.MaxInt64))
	}
}

// TestLoad_BrokerWithoutDeliveryTakesKnativesDefault: Knative's Broker
// defaulting webhook gives a Broker without spec.delivery the delivery of
// config-br-defaults (stock: retry 10, exponential, PT0.2S), which its
// Triggers without delivery then take; a folder without a Broker stands
// for such a Broker. A Broker's own delivery, even an empty one, is left
// as it is, and a Trigger's own delivery replaces the Broker's.
func TestLoad_BrokerWithoutDeliveryTakesKnativesDefault(t *testing.T) {
	stock := Delivery{Retry: 10, BackoffPolicy: BackoffExponential, BackoffDelay: 200 * time.Millisecond}
	inherits := trigger("t", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n")
	own := trigger("u", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n  delivery:\n    retry: 1\n")
	for name, tc := range map[string]struct {
		docs []string
		want Delivery
	}{
		"no spec":        {[]string{brokerDoc, inherits, own}, stock},
		"no delivery":    {[]string{brokerDoc + "spec:\n  config:\n    kind: ConfigMap\n    name: c\n", inherits, own}, stock},
		"null delivery":  {[]string{brokerDoc + "spec:\n  delivery: null\n", inherits, own}, stock},
		"no Broker":      {[]string{strings.Replace(inherits, "broker: b", "broker: default", 1), strings.Replace(own, "broker: b", "broker: default", 1)}, stock},
		"empty delivery": {[]string{brokerDoc + "spec:\n  delivery: {}\n", inherits, own}, Delivery{}},
		"own delivery":   {[]string{brokerDoc + "spec:\n  delivery:\n    retry: 2\n", inherits, own}, Delivery{Retry: 2}},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := Load(manifests(tc.docs...))
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Triggers) != 2 {
				t.Fatalf("%d Triggers, warnings %q", len(cfg.Triggers), cfg.Warnings)
			}
			if got := cfg.Triggers[0].Delivery; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Trigger without delivery: %+v; want %+v", got, tc.want)
			}
			if got := cfg.Triggers[1].Delivery; !reflect.DeepEqual(got, Delivery{Retry: 1}) {
				t.Errorf("Trigger with its own delivery: %+v; want retry 1 only", got)
			}
		})
	}
}

// TestLoad_URIsShowNoPassword: a subscriber's or dead-letter sink's URI
// the broker refuses, or names in a warning beside a ref it cannot
// resolve, shows no password or token of it.
func TestLoad_URIsShowNoPassword(t *testing.T) {
	for _, uri := range []string{"ftp://u:hunter2@h/x", "http://u:hunter2@/x", "h.example/x?access_token=hunter2"} {
		for _, spec := range []string{
			"  subscriber:\n    uri: " + uri + "\n",
			"  subscriber:\n    uri: http://127.0.0.1:1/\n  delivery:\n    deadLetterSink:\n      uri: " + uri + "\n",
		} {
			_, err := Load(manifests(brokerDoc, trigger("t1", spec)))
			if err == nil || !strings.Contains(err.Error(), "want an absolute http") || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("uri %s: err %v, want a refusal without the password", uri, err)
			}
		}
	}
	d := Destination{Ref: "alerts", URI: "/hook?token=hunter2"}
	if s := d.String(); strings.Contains(s, "hunter2") || !strings.Contains(s, "alerts") {
		t.Errorf("Destination.String() = %q", s)
	}
}
