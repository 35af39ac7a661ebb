package validate

// The func CLI descriptors (functions/*/func.yaml) must point the functions
// at the Broker the repository ships, in the namespace docs/deployment.md
// creates.

import (
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"knative.dev/eventing/pkg/apis/eventing"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/reconciler/names"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// funcYAML is the part of the func CLI's func.yaml schema (specVersion
// 0.36.0) the functions here use; decoding is strict, so a field the
// schema does not have, or one in the wrong place, is an error.
type funcYAML struct {
	SpecVersion string         `json:"specVersion"`
	Name        string         `json:"name"`
	Runtime     string         `json:"runtime"`
	Invoke      string         `json:"invoke"`
	Namespace   string         `json:"namespace,omitempty"`
	Created     string         `json:"created,omitempty"`
	Image       string         `json:"image,omitempty"`
	Registry    string         `json:"registry,omitempty"`
	Build       map[string]any `json:"build,omitempty"`
	Deploy      struct {
		Namespace   string            `json:"namespace,omitempty"`
		Remote      bool              `json:"remote,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Options     map[string]any    `json:"options,omitempty"`
		// func's []Label: each a key and a value, which func sets on
		// the Service (and its revisions) as it stands on every deploy.
		Labels []struct {
			Key   string `json:"key"`
			Value string `json:"value,omitempty"`
		} `json:"labels,omitempty"`
		HealthEndpoints    map[string]string `json:"healthEndpoints,omitempty"`
		ServiceAccountName string            `json:"serviceAccountName,omitempty"`
	} `json:"deploy,omitempty"`
	Run struct {
		Envs []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"envs,omitempty"`
		Volumes []struct {
			Secret                string         `json:"secret,omitempty"`
			ConfigMap             string         `json:"configMap,omitempty"`
			PersistentVolumeClaim map[string]any `json:"persistentVolumeClaim,omitempty"`
			EmptyDir              map[string]any `json:"emptyDir,omitempty"`
			Path                  string         `json:"path"`
		} `json:"volumes,omitempty"`
		StartTimeout any `json:"startTimeout,omitempty"`
	} `json:"run"`
}

func (f *funcYAML) env(name string) (string, bool) {
	for _, e := range f.Run.Envs {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// loadFuncYAMLs decodes every functions/*/func.yaml, by file.
func loadFuncYAMLs(t *testing.T) map[string]*funcYAML {
	t.Helper()
	files, err := filepath.Glob("../../functions/*/func.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no func.yaml found")
	}
	out := map[string]*funcYAML{}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var f funcYAML
		if err := yaml.UnmarshalStrict(raw, &f); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out[file] = &f
	}
	return out
}

var docNamespace = regexp.MustCompile("(?m)^kubectl create namespace ([a-z0-9-]+)")

// shippedBroker is the one Broker config/broker ships and the namespace
// docs/deployment.md applies it in.
func shippedBroker(t *testing.T) (*eventingv1.Broker, string) {
	t.Helper()
	var b *eventingv1.Broker
	for _, d := range loadManifests(t) {
		if d.kind == "Broker" {
			if b != nil {
				t.Fatal("more than one Broker shipped")
			}
			b = d.obj.(*eventingv1.Broker)
		}
	}
	if b == nil {
		t.Fatal("no Broker shipped")
	}
	doc := deploymentDoc(t)
	m := docNamespace.FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/deployment.md creates no namespace")
	}
	return b, string(m[1])
}

// TestFuncYAML_SinkIsTheShippedBroker: each func.yaml sets K_SINK (ingest
// sends every change there; sync its retried failures and the sweep's
// requests, and refuses sweep.requested without one), and it is the
// ingress address Knative gives the shipped Broker: path /NAMESPACE/NAME
// (eventing's broker reconciler, httpAddress), on the channel-based
// Broker's shared ingress in knative-eventing. Another path is answered
// 404 and every event is lost.
func TestFuncYAML_SinkIsTheShippedBroker(t *testing.T) {
	b, ns := shippedBroker(t)
	for file, f := range loadFuncYAMLs(t) {
		sink, ok := f.env("K_SINK")
		if !ok {
			t.Errorf("%s sets no K_SINK: the function has no Broker to send to", file)
			continue
		}
		u, err := url.Parse(sink)
		if err != nil {
			t.Errorf("%s: K_SINK %q: %v", file, sink, err)
			continue
		}
		if want := "/" + ns + "/" + b.Name; u.Path != want {
			t.Errorf("%s: K_SINK path %q, want %q (Broker %s in namespace %s)", file, u.Path, want, b.Name, ns)
		}
		if b.Annotations[eventing.BrokerClassKey] == eventing.MTChannelBrokerClassValue {
			if want := names.BrokerIngressName + ".knative-eventing.svc.cluster.local"; u.Scheme != "http" || u.Host != want {
				t.Errorf("%s: K_SINK %q, want http://%s/...", file, sink, want)
			}
		}
	}
}

// TestFuncYAML_FilesAreMounted: every *_FILE setting a func.yaml gives
// names a file under one of its run.volumes paths, and, for a Secret or
// ConfigMap volume (func mounts each key as a file of that name), a key
// docs/deployment.md has the operator create in it. Otherwise the
// function fails at start, unable to read the file.
func TestFuncYAML_FilesAreMounted(t *testing.T) {
	creates := docCreates(t)
	for file, f := range loadFuncYAMLs(t) {
		for _, e := range f.Run.Envs {
			if !strings.HasSuffix(e.Name, "_FILE") || e.Value == "" {
				continue
			}
			mounted := false
			for _, v := range f.Run.Volumes {
				rel, ok := strings.CutPrefix(e.Value, strings.TrimSuffix(v.Path, "/")+"/")
				if v.Path == "" || !ok {
					continue
				}
				mounted = true
				var object string
				switch {
				case v.Secret != "":
					object = "secret/" + v.Secret
				case v.ConfigMap != "":
					object = "configmap/" + v.ConfigMap
				default:
					continue
				}
				c, ok := creates[object]
				if !ok {
					t.Errorf("%s: %s=%s is in %s, which docs/deployment.md never creates", file, e.Name, e.Value, object)
				} else if !c.keys[rel] {
					t.Errorf("%s: %s=%s: %s gets no key %q in docs/deployment.md (line %d)", file, e.Name, e.Value, object, rel, c.line)
				}
			}
			if !mounted {
				t.Errorf("%s: %s=%s lies under no run.volumes path: the function cannot read it", file, e.Name, e.Value)
			}
		}
	}
}

// TestFuncYAML_Initialized: func build, deploy and run refuse a folder
// whose func.yaml has no created stamp ("does not contain an initialized
// function": knative/func pkg/functions Function.Initialized is
// !Created.IsZero(), checked by cmd/build.go and cmd/deploy.go). At the
// latest specVersion no migration adds one, so the file must carry it.
func TestFuncYAML_Initialized(t *testing.T) {
	for file, f := range loadFuncYAMLs(t) {
		if f.Created == "" {
			t.Errorf("%s has no created stamp: func treats the folder as no function at all", file)
			continue
		}
		if c, err := time.Parse(time.RFC3339Nano, f.Created); err != nil || c.IsZero() {
			t.Errorf("%s: created %q is not a time func reads (RFC 3339): %v", file, f.Created, err)
		}
	}
}

// TestFuncYAML_ServicesAreClusterLocal: `func deploy` makes a public
// Knative Service unless func.yaml's deploy.labels carries
// networking.knative.dev/visibility: cluster-local, as every Service of
// config/knative does. func sets the Service's labels to func.yaml's alone
// on every deploy (knative/func pkg/knative/deployer.go, updateService),
// so a label set by hand with kubectl is gone at the next deploy. A public
// sync takes a replication.requested (a full dsync of any user) or a
// sweep.requested with all:true from anyone, and the func-deployed ingest
// takes changes without credentials.
func TestFuncYAML_ServicesAreClusterLocal(t *testing.T) {
	const key = "networking.knative.dev/visibility"
	want := serving.VisibilityClusterLocal
	services := 0
	for _, d := range loadManifests(t) {
		if svc, ok := d.obj.(*servingv1.Service); ok {
			services++
			if got := svc.Labels[key]; got != want {
				t.Errorf("%s: Service %s: label %s=%q, want %q: the func.yaml files follow the project's Services", d.file, d.name, key, got, want)
			}
		}
	}
	if services == 0 {
		t.Fatal("no Service in config/knative")
	}
	for file, f := range loadFuncYAMLs(t) {
		got, set := "", false
		for _, l := range f.Deploy.Labels {
			if l.Key == key {
				got, set = l.Value, true
			}
		}
		if got != want {
			t.Errorf("%s: deploy.labels %s=%q (set: %v), want %q: func deploy makes %s a public Service, and undoes a label set by hand at every deploy",
				file, key, got, set, want, f.Name)
		}
	}
}

// funcRef is func's reference to a key of a Secret or ConfigMap in a
// run.envs value (knative/func pkg/functions regKeyFromSecret and
// regKeyFromConfigMap): '{{ secret:NAME:KEY }}', '{{ configMap:NAME:KEY }}'.
var funcRef = regexp.MustCompile(`^{{\s*(secret|configMap):((?:\w|['-]\w)+):([-._a-zA-Z0-9]+)\s*}}$`)

// TestFuncYAML_SyncReadsWhatTheServicesRead: the sync function func
// deploys must reach the same Redis and Dovecot hosts as the sync
// Services of config/knative. Every setting those Services take from a
// Secret or ConfigMap key, the sync func.yaml takes from the same key
// (not a literal value the operator would have to find and edit), and
// every other setting they give, it gives too. The function always logs
// JSON, so the log format is a setting it need not repeat; nor the
// shutdown timeout: func-go's own server stops it, waiting 30 s for the
// events in flight, which take at most 25 s there.
func TestFuncYAML_SyncReadsWhatTheServicesRead(t *testing.T) {
	sync := funcYAMLOf(t, "sync")
	services := 0
	for _, d := range loadManifests(t) {
		svc, ok := d.obj.(*servingv1.Service)
		if !ok || svc.Labels["app.kubernetes.io/component"] != "sync" {
			continue
		}
		services++
		for _, e := range svc.Spec.Template.Spec.Containers[0].Env {
			got, ok := sync.env(e.Name)
			if e.Name == "DOVEWARDEN_LOG_FORMAT" || e.Name == "DOVEWARDEN_SHUTDOWN_TIMEOUT" {
				continue
			}
			if !ok {
				t.Errorf("%s sets %s; functions/sync/func.yaml does not", d.name, e.Name)
				continue
			}
			var want string
			switch {
			case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
				want = "{{ secret:" + e.ValueFrom.SecretKeyRef.Name + ":" + e.ValueFrom.SecretKeyRef.Key + " }}"
			case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil && e.ValueFrom.ConfigMapKeyRef.Optional != nil && *e.ValueFrom.ConfigMapKeyRef.Optional:
				// func refuses a reference to a missing key: func.yaml
				// sets the variable itself.
				if funcRef.MatchString(got) {
					t.Errorf("functions/sync/func.yaml: %s=%q: a reference, which func refuses while the optional key %s is missing", e.Name, got, e.ValueFrom.ConfigMapKeyRef.Key)
				}
				continue
			case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
				want = "{{ configMap:" + e.ValueFrom.ConfigMapKeyRef.Name + ":" + e.ValueFrom.ConfigMapKeyRef.Key + " }}"
			default:
				continue
			}
			if m := funcRef.FindStringSubmatch(got); m == nil || "{{ "+m[1]+":"+m[2]+":"+m[3]+" }}" != want {
				t.Errorf("functions/sync/func.yaml: %s=%q, want %q as %s reads it", e.Name, got, want, d.name)
			}
		}
	}
	if services == 0 {
		t.Fatal("no sync Service in config/knative")
	}
}

// TestFuncYAML_ReferencesAreCreated: a Secret or ConfigMap key a func.yaml
// reads is one docs/deployment.md has the operator create; func deploy
// refuses a function whose references are missing.
func TestFuncYAML_ReferencesAreCreated(t *testing.T) {
	creates := docCreates(t)
	for file, f := range loadFuncYAMLs(t) {
		for _, e := range f.Run.Envs {
			m := funcRef.FindStringSubmatch(e.Value)
			if m == nil {
				if strings.Contains(e.Value, "{{") {
					t.Errorf("%s: %s=%q is no reference func reads", file, e.Name, e.Value)
				}
				continue
			}
			object := strings.ToLower(m[1]) + "/" + m[2]
			if c, ok := creates[object]; !ok {
				t.Errorf("%s: %s reads %s, which docs/deployment.md never creates", file, e.Name, object)
			} else if !c.keys[m[3]] {
				t.Errorf("%s: %s reads key %q of %s, which docs/deployment.md does not give it (line %d)", file, e.Name, m[3], object, c.line)
			}
		}
	}
}

// TestDocs_FuncSinkOnOtherBrokerClasses: the func.yaml files' K_SINK is
// the channel-based Broker's shared ingress, which docs/deployment.md
// recommends against in production. Another class has its own ingress
// (the Kafka Broker's is another Service), where the shipped address
// reaches no Broker and every event ingest sends is lost. The func
// section must say so and where the Broker's address is read: its
// status.address.url.
func TestDocs_FuncSinkOnOtherBrokerClasses(t *testing.T) {
	section := funcSection(t)
	for _, want := range []string{"Kafka", "status.address.url"} {
		if !strings.Contains(section, want) {
			t.Errorf("docs/deployment.md, func CLI section: does not mention %q: an operator on another Broker class keeps the channel-based Broker's ingress in K_SINK", want)
		}
	}
}

// TestFuncYAML_IngestReadsWhatTheServiceReads: the ingest function func
// deploys takes each setting the ingest Service of config/knative takes
// from a Secret or ConfigMap of step 2 from the same key. Its Redis URL is
// what records a change ingest could not hand to the Broker as pending
// for the retry sweep (Dovecot never sends it again), and what serves the
// metrics the alerts read while sync is scaled to zero. The Service's
// Basic auth, a mounted file, stays out: the function is cluster-local
// and asks for no credentials (docs/deployment.md).
func TestFuncYAML_IngestReadsWhatTheServiceReads(t *testing.T) {
	ingest := funcYAMLOf(t, "ingest")
	refs := 0
	for _, e := range serviceNamed(t, "dovewarden-ingest").Spec.Template.Spec.Containers[0].Env {
		var want string
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			want = "{{ secret:" + e.ValueFrom.SecretKeyRef.Name + ":" + e.ValueFrom.SecretKeyRef.Key + " }}"
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			want = "{{ configMap:" + e.ValueFrom.ConfigMapKeyRef.Name + ":" + e.ValueFrom.ConfigMapKeyRef.Key + " }}"
		default:
			continue
		}
		refs++
		got, ok := ingest.env(e.Name)
		if m := funcRef.FindStringSubmatch(got); !ok || m == nil || "{{ "+m[1]+":"+m[2]+":"+m[3]+" }}" != want {
			t.Errorf("functions/ingest/func.yaml: %s=%q (set: %v), want %q as the Service dovewarden-ingest reads it", e.Name, got, ok, want)
		}
	}
	if refs == 0 {
		t.Fatal("the Service dovewarden-ingest reads no Secret or ConfigMap key: nothing to compare")
	}
}

// funcYAMLOf is functions/NAME/func.yaml.
func funcYAMLOf(t *testing.T, name string) *funcYAML {
	t.Helper()
	for file, f := range loadFuncYAMLs(t) {
		if filepath.Base(filepath.Dir(file)) == name {
			return f
		}
	}
	t.Fatalf("no functions/%s/func.yaml", name)
	return nil
}
