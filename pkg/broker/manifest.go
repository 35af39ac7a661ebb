package broker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Annotations a Trigger may carry to size its lane here. Knative ignores
// them (annotations are free-form), so the same manifests serve both.
const (
	AnnotationWorkers   = "dovewarden.org/workers"
	AnnotationQueueSize = "dovewarden.org/queue-size"
)

// The most workers and queue places a lane may have, by flag or by
// annotation. A worker is a goroutine (twice as many with a dead-letter
// sink): a million, which a typo can ask for, takes gigabytes of stacks.
const (
	MaxWorkers   = 10_000
	MaxQueueSize = 1_000_000
)

// DefaultBrokerName is the Broker Triggers name when the manifests hold no
// Broker (Knative's own default Broker is called "default").
const DefaultBrokerName = "default"

// defaultBrokerDelivery is the delivery Knative's Broker defaulting
// webhook gives a Broker without spec.delivery: config-br-defaults'
// clusterDefault.delivery, which in Knative's stock ConfigMap
// (config/core/configmaps/default-broker.yaml) is retry 10, backoffPolicy
// exponential, backoffDelay PT0.2S. A cluster may change it. It applies
// here too when the manifests hold no Broker.
func defaultBrokerDelivery() *Delivery {
	return &Delivery{Retry: 10, BackoffPolicy: BackoffExponential, BackoffDelay: 200 * time.Millisecond}
}

// Config is what the manifests say: the Broker and its Triggers.
type Config struct {
	// Broker is the Broker's name; the ingress also answers at
	// /<namespace>/<Broker>.
	Broker string
	// Triggers are the Broker's Triggers, sorted by name.
	Triggers []*Trigger
	// Warnings are things loaded that are valid but probably not meant
	// (Triggers of another Broker), for the caller to log.
	Warnings []string
}

// Trigger is one Trigger manifest, validated and ready to route.
type Trigger struct {
	Name string
	// File is the manifest file the Trigger came from.
	File       string
	Filter     Filter
	Subscriber Destination
	// Delivery is the Trigger's delivery, or the Broker's when the
	// Trigger sets none (Knative's default when the Broker sets none
	// either, see defaultBrokerDelivery). As in Knative, a Trigger's delivery replaces the
	// Broker's retry, backoff and timeout, one without a deadLetterSink
	// takes the Broker's, and only the Trigger's own format applies.
	Delivery Delivery
	// Workers and QueueSize come from the dovewarden.org/workers and
	// dovewarden.org/queue-size annotations; 0 means the broker default.
	Workers, QueueSize int
}

// Destination is a Knative Destination: a ref (only its name is used, to
// find an in-process handler or a --subscriber URL, though loading asks
// for its apiVersion and kind as Knative does) and/or a URI, and the
// CACerts (PEM) an https destination's certificate may also chain to.
// Its audience (OIDC) is read and not used: there is no OIDC here, as in
// Knative with OIDC off.
type Destination struct {
	Ref     string
	URI     string
	CACerts string
}

// String names d in logs: its URI without a password or secret query
// parameters (config.RedactURL).
func (d Destination) String() string {
	switch {
	case d.Ref != "" && d.URI != "":
		return d.Ref + " + " + config.RedactURL(d.URI)
	case d.Ref != "":
		return d.Ref
	}
	return config.RedactURL(d.URI)
}

// The YAML shapes, with only the fields used.
type (
	rawObject struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name        string            `json:"name"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	rawBrokerSpec struct {
		Delivery json.RawMessage `json:"delivery"`
	}
	rawTriggerSpec struct {
		Broker    string          `json:"broker"`
		BrokerRef json.RawMessage `json:"brokerRef"`
		Filter    *struct {
			Attributes map[string]string `json:"attributes"`
		} `json:"filter"`
		Filters    json.RawMessage `json:"filters"`
		Subscriber rawDestination  `json:"subscriber"`
		Delivery   json.RawMessage `json:"delivery"`
	}
	rawDestination struct {
		Ref     *rawRef `json:"ref"`
		URI     string  `json:"uri"`
		CACerts *string `json:"CACerts"`
	}
	// rawRef is a Knative KReference. Only its name is used here, but
	// Knative's webhook refuses one without apiVersion or kind, so it is
	// refused here too.
	rawRef struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Name       string `json:"name"`
		Namespace  string `json:"namespace"`
		Group      string `json:"group"`
	}
	rawDelivery struct {
		DeadLetterSink *rawDestinationStrict `json:"deadLetterSink"`
		Retry          *int32                `json:"retry"`
		BackoffPolicy  *string               `json:"backoffPolicy"`
		BackoffDelay   *string               `json:"backoffDelay"`
		Timeout        *string               `json:"timeout"`
		Format         *string               `json:"format"`
	}
	// rawDestinationStrict is a Destination decoded strictly (inside
	// delivery, where unknown fields are refused).
	rawDestinationStrict struct {
		Ref      *rawRef `json:"ref"`
		URI      string  `json:"uri"`
		CACerts  *string `json:"CACerts"`
		Audience *string `json:"audience"`
	}
)

// MaxManifestFile bounds a manifest file: Kubernetes keeps an object in
// at most 1.5 MiB, and a file of the folder is a few of them. A larger
// one (a log, a dump named .yaml) is refused rather than read whole.
const MaxManifestFile = 4 << 20

// readManifest reads file of fsys, a regular file (a symlink to one, as
// a mounted ConfigMap's files are, included) of at most MaxManifestFile
// bytes: a named pipe would block the start, a device never end.
func readManifest(fsys fs.FS, file string) ([]byte, error) {
	fi, err := fs.Stat(fsys, file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: not a regular file (%s)", file, fi.Mode().Type())
	}
	f, err := fsys.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxManifestFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if len(raw) > MaxManifestFile {
		return nil, fmt.Errorf("read %s: larger than %d bytes, too large for a manifest file: is it the right file?", file, MaxManifestFile)
	}
	return raw, nil
}

// Load reads every *.yaml and *.yml file at the root of fsys (multi-document
// files are fine; kinds other than Broker and Trigger are skipped) and
// validates what it loads. Errors name the file and the Trigger.
func Load(fsys fs.FS) (*Config, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read trigger manifests: %w", err)
	}
	var files []string
	for _, e := range entries {
		if !e.IsDir() && (strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
			files = append(files, e.Name())
		}
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, errors.New("read trigger manifests: no *.yaml files")
	}
	type doc struct {
		file string
		obj  rawObject
	}
	var brokers, triggers []doc
	for _, file := range files {
		raw, err := readManifest(fsys, file)
		if err != nil {
			return nil, err
		}
		// Split as kubectl apply does: "---" at a line's start, followed
		// by nothing but blanks or a comment (CRLF endings included).
		docs := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
		for i := 1; ; i++ {
			part, err := docs.Read()
			if err == io.EOF {
				break
			}
			if err != nil { // kubectl's "invalid Yaml document separator"
				return nil, fmt.Errorf("%s: at the end of document %d: %w", file, i, err)
			}
			var obj rawObject
			if err := yaml.Unmarshal(part, &obj); err != nil {
				return nil, fmt.Errorf("%s: document %d: %w", file, i, err)
			}
			if !strings.HasPrefix(obj.APIVersion, "eventing.knative.dev/") {
				continue
			}
			switch obj.Kind {
			case "Broker":
				brokers = append(brokers, doc{file, obj})
			case "Trigger":
				triggers = append(triggers, doc{file, obj})
			}
		}
	}
	cfg := &Config{Broker: DefaultBrokerName}
	brokerDelivery := defaultBrokerDelivery()
	switch len(brokers) {
	case 0:
	case 1:
		b := brokers[0]
		if b.obj.Metadata.Name == "" {
			// Knative's API refuses it. Here every Trigger would be
			// skipped as another Broker's, and the ingress would accept
			// every event and route it nowhere.
			return nil, fmt.Errorf("%s: Broker: no metadata.name", b.file)
		}
		cfg.Broker = b.obj.Metadata.Name
		var spec rawBrokerSpec
		if err := unmarshalSpec(b.obj.Spec, &spec); err != nil {
			return nil, fmt.Errorf("%s: Broker %s: %w", b.file, cfg.Broker, err)
		}
		d, err := parseDelivery(spec.Delivery)
		if err != nil {
			return nil, fmt.Errorf("%s: Broker %s: delivery: %w", b.file, cfg.Broker, err)
		}
		if d != nil {
			brokerDelivery = d
		}
	default:
		return nil, fmt.Errorf("%s and %s: more than one Broker; the embedded broker is one Broker", brokers[0].file, brokers[1].file)
	}
	seen := map[string]string{}
	for _, d := range triggers {
		name := d.obj.Metadata.Name
		if prev, dup := seen[name]; dup {
			return nil, fmt.Errorf("%s: Trigger %s: also defined in %s", d.file, name, prev)
		}
		seen[name] = d.file
		tr, broker, err := parseTrigger(d.file, d.obj, brokerDelivery)
		if err != nil {
			return nil, fmt.Errorf("%s: Trigger %s: %w", d.file, name, err)
		}
		if broker != cfg.Broker {
			cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s: Trigger %s is for Broker %q, not %q: skipped", d.file, name, broker, cfg.Broker))
			continue
		}
		cfg.Triggers = append(cfg.Triggers, tr)
	}
	sort.Slice(cfg.Triggers, func(i, j int) bool { return cfg.Triggers[i].Name < cfg.Triggers[j].Name })
	return cfg, nil
}

func unmarshalSpec(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}

// strict decodes raw into v refusing unknown fields: a misspelt filter
// dialect or delivery setting must not silently change routing.
func strict(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func parseTrigger(file string, obj rawObject, brokerDelivery *Delivery) (*Trigger, string, error) {
	if obj.Metadata.Name == "" {
		return nil, "", errors.New("no metadata.name")
	}
	var spec rawTriggerSpec
	if err := unmarshalSpec(obj.Spec, &spec); err != nil {
		return nil, "", err
	}
	if len(spec.BrokerRef) > 0 && string(spec.BrokerRef) != "null" {
		return nil, "", errors.New("spec.brokerRef is not supported here: name the Broker in spec.broker")
	}
	if spec.Broker == "" {
		return nil, "", errors.New("spec.broker: not set")
	}
	tr := &Trigger{Name: obj.Metadata.Name, File: file}
	var err error
	switch {
	case len(spec.Filters) > 0 && string(spec.Filters) != "null" && string(spec.Filters) != "[]":
		// As in Knative, filters wins over filter when both are set.
		var raws []rawFilter
		if err := strict(spec.Filters, &raws); err != nil {
			return nil, "", fmt.Errorf("spec.filters: %w", err)
		}
		if tr.Filter, err = compileFilters(raws); err != nil {
			return nil, "", fmt.Errorf("spec.filters%w", err)
		}
	case spec.Filter != nil:
		if tr.Filter, err = compileAttributes(spec.Filter.Attributes); err != nil {
			return nil, "", fmt.Errorf("spec.filter.attributes: %w", err)
		}
	default:
		tr.Filter = matchAll{}
	}
	if tr.Subscriber, err = destination(spec.Subscriber.Ref, spec.Subscriber.URI, spec.Subscriber.CACerts); err != nil {
		return nil, "", fmt.Errorf("spec.subscriber: %w", err)
	}
	if len(spec.Delivery) > 0 && string(spec.Delivery) != "null" {
		d, err := parseDelivery(spec.Delivery)
		if err != nil {
			return nil, "", fmt.Errorf("spec.delivery: %w", err)
		}
		tr.Delivery = *d
		if d.DeadLetterSink == nil && brokerDelivery != nil {
			// Knative's Trigger reconciler resolves the Trigger's
			// dead-letter sink, else the Broker's.
			tr.Delivery.DeadLetterSink = brokerDelivery.DeadLetterSink
		}
	} else {
		tr.Delivery = *brokerDelivery
		// Knative's filter sends in the Trigger's own delivery.format
		// only; the Broker's goes no further than its channel.
		tr.Delivery.Structured = false
	}
	if tr.Workers, err = positiveAnnotation(obj.Metadata.Annotations, AnnotationWorkers, MaxWorkers); err != nil {
		return nil, "", err
	}
	if tr.QueueSize, err = positiveAnnotation(obj.Metadata.Annotations, AnnotationQueueSize, MaxQueueSize); err != nil {
		return nil, "", err
	}
	return tr, spec.Broker, nil
}

func destination(r *rawRef, uri string, caCerts *string) (Destination, error) {
	ref := ""
	if r != nil {
		if r.Name == "" {
			return Destination{}, errors.New("ref without a name")
		}
		if err := checkRef(r); err != nil {
			return Destination{}, err
		}
		ref = r.Name
	}
	if ref == "" && uri == "" {
		return Destination{}, errors.New("neither ref nor uri set")
	}
	if uri != "" && ref == "" && !isAbsHTTP(uri) {
		return Destination{}, fmt.Errorf("uri %q: want an absolute http or https URL", config.RedactURL(uri))
	}
	if uri != "" && ref != "" {
		// Beside a ref, a uri is resolved against the ref's address;
		// Knative's webhook refuses an absolute one.
		if u, err := url.Parse(uri); err != nil || u.IsAbs() {
			return Destination{}, fmt.Errorf("uri %q beside ref %s: want a relative URI such as /path (Knative refuses an absolute one there)", config.RedactURL(uri), ref)
		}
	}
	d := Destination{Ref: ref, URI: uri}
	if caCerts != nil {
		if _, err := certPool(*caCerts); err != nil {
			return Destination{}, fmt.Errorf("CACerts: %w", err)
		}
		d.CACerts = *caCerts
	}
	return d, nil
}

// checkRef refuses a ref Knative's webhook refuses for want of a field
// (KReference.Validate: name, apiVersion and kind are required), and also
// one beside a uri, which Knative's webhook lets through unchecked but
// cannot resolve to an address: such a Trigger is never ready there.
func checkRef(r *rawRef) error {
	var missing []string
	if r.APIVersion == "" {
		missing = append(missing, "apiVersion")
	}
	if r.Kind == "" {
		missing = append(missing, "kind")
	}
	if len(missing) > 0 {
		return fmt.Errorf("ref %s: no %s (Knative requires a ref's name, kind and apiVersion, e.g. apiVersion: serving.knative.dev/v1 and kind: Service)",
			r.Name, strings.Join(missing, " and no "))
	}
	return nil
}

// positiveAnnotation reads a whole number from 1 to most, the bound of the
// flag the annotation overrides.
func positiveAnnotation(ann map[string]string, key string, most int) (int, error) {
	v, ok := ann[key]
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > most {
		return 0, fmt.Errorf("annotation %s=%q: want a whole number from 1 to %d", key, v, most)
	}
	return n, nil
}

func isAbsHTTP(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}
