package validate

import (
	"os"
	"path"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"sigs.k8s.io/yaml"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// created is a Secret or ConfigMap docs/deployment.md has the operator
// create, with the keys it gets and the line of the command.
type created struct {
	keys map[string]bool
	line int
}

var (
	createCmd = regexp.MustCompile(`^kubectl create (secret generic|configmap) ([a-z0-9.-]+)\b`)
	literal   = regexp.MustCompile(`--from-literal=([^=\s]+)=`)
	fromFile  = regexp.MustCompile(`--from-file=(\S+)`)
)

// docCreates lists the Secrets ("secret/NAME") and ConfigMaps
// ("configmap/NAME") the kubectl commands of docs/deployment.md create.
func docCreates(t *testing.T) map[string]created {
	t.Helper()
	doc := deploymentDoc(t)
	out := map[string]created{}
	for i, line := range strings.Split(string(doc), "\n") {
		m := createCmd.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		kind := "secret"
		if m[1] == "configmap" {
			kind = "configmap"
		}
		c := created{keys: map[string]bool{}, line: i + 1}
		for _, l := range literal.FindAllStringSubmatch(line, -1) {
			c.keys[l[1]] = true
		}
		for _, f := range fromFile.FindAllStringSubmatch(line, -1) {
			// --from-file=KEY=PATH, or --from-file=PATH whose key is the
			// file's base name.
			if k, _, ok := strings.Cut(f[1], "="); ok {
				c.keys[k] = true
			} else {
				c.keys[path.Base(f[1])] = true
			}
		}
		out[kind+"/"+m[2]] = c
	}
	return out
}

// docLine is the 1-based line of docs/deployment.md the pattern first
// matches, or 0.
func docLine(t *testing.T, pattern string) int {
	t.Helper()
	doc := deploymentDoc(t)
	re := regexp.MustCompile(pattern)
	for i, line := range strings.Split(string(doc), "\n") {
		if re.MatchString(line) {
			return i + 1
		}
	}
	return 0
}

// TestDocs_SecretsBeforeServices: following docs/deployment.md in order,
// every Secret key and ConfigMap the Services in config/knative read (env
// secretKeyRef, secret and configMap volumes) exists, in the namespace
// created before it, when config/knative is applied; a Pod whose Secret
// or ConfigMap is missing does not start. ko needs KO_DOCKER_REPO.
func TestDocs_SecretsBeforeServices(t *testing.T) {
	apply := docLine(t, `^(ko|kubectl) apply .*-f config/knative/?( |$)`)
	if apply == 0 {
		t.Fatal("docs/deployment.md never applies config/knative")
	}
	if docLine(t, `^ko apply `) == apply {
		if repo := docLine(t, `^export KO_DOCKER_REPO=`); repo == 0 || repo > apply {
			t.Errorf("docs/deployment.md runs ko apply (line %d) without setting KO_DOCKER_REPO before it", apply)
		}
	}
	ns := docLine(t, `^kubectl create namespace `)
	creates := docCreates(t)
	for object, c := range creates {
		if ns == 0 || ns > c.line {
			t.Errorf("docs/deployment.md creates %s (line %d) before its namespace (line %d)", object, c.line, ns)
		}
	}
	need := func(where, object string, keys ...string) {
		c, ok := creates[object]
		switch {
		case !ok:
			t.Errorf("%s reads %s, which docs/deployment.md never creates", where, object)
			return
		case c.line > apply:
			t.Errorf("docs/deployment.md creates %s (line %d) after applying config/knative (line %d), whose %s reads it", object, c.line, apply, where)
		}
		for _, k := range keys {
			if !c.keys[k] {
				t.Errorf("%s reads key %q of %s, which docs/deployment.md (line %d) does not create", where, k, object, c.line)
			}
		}
	}
	services := 0
	for _, d := range loadManifests(t) {
		svc, ok := d.obj.(*servingv1.Service)
		if !ok || !strings.Contains(d.file, "knative") {
			continue
		}
		services++
		spec := svc.Spec.Template.Spec
		where := "Service " + svc.Name
		for _, c := range spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					need(where, "secret/"+e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
				}
				if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil {
					if r.ConfigMapKeyRef.Optional != nil && *r.ConfigMapKeyRef.Optional {
						need(where, "configmap/"+r.ConfigMapKeyRef.Name) // the key may well be missing
					} else {
						need(where, "configmap/"+r.ConfigMapKeyRef.Name, r.ConfigMapKeyRef.Key)
					}
				}
			}
		}
		for _, v := range spec.Volumes {
			var keys []string
			switch {
			case v.Secret != nil:
				for _, it := range v.Secret.Items {
					keys = append(keys, it.Key)
				}
				need(where, "secret/"+v.Secret.SecretName, keys...)
			case v.ConfigMap != nil:
				for _, it := range v.ConfigMap.Items {
					keys = append(keys, it.Key)
				}
				need(where, "configmap/"+v.ConfigMap.Name, keys...)
			}
		}
	}
	if services == 0 {
		t.Fatal("no Service in config/knative")
	}
}

// docServices are the Knative Services docs/deployment.md has the operator
// apply inline (kubectl apply -f - <<EOF ... EOF), by name, each with the
// line of its kubectl command. Each is decoded strictly, defaulted and
// validated like the shipped manifests, with its image placeholder (a
// word in capitals) standing for a real image.
func docServices(t *testing.T) map[string]int {
	t.Helper()
	doc := deploymentDoc(t)
	start := regexp.MustCompile(`^kubectl apply .*-f - <<'?EOF'?$`)
	placeholder := regexp.MustCompile(`(?m)^(\s*-?\s*image: )[A-Z_]+$`)
	out := map[string]int{}
	lines := strings.Split(string(doc), "\n")
	for i := 0; i < len(lines); i++ {
		if !start.MatchString(lines[i]) {
			continue
		}
		at := i + 1
		var body []string
		for i++; i < len(lines) && lines[i] != "EOF"; i++ {
			body = append(body, lines[i])
		}
		text := placeholder.ReplaceAllString(strings.Join(body, "\n"), "${1}receiver")
		var svc servingv1.Service
		if err := yaml.UnmarshalStrict([]byte(text), &svc); err != nil {
			t.Errorf("docs/deployment.md line %d: %v", at, err)
			continue
		}
		if svc.Kind != "Service" || svc.APIVersion != "serving.knative.dev/v1" {
			continue
		}
		ctx := webhookContext(t)
		svc.SetNamespace("dovewarden")
		svc.SetDefaults(apis.WithinParent(ctx, metav1.ObjectMeta{Namespace: "dovewarden"}))
		if fe := svc.Validate(ctx).Filter(apis.ErrorLevel); fe != nil {
			t.Errorf("docs/deployment.md line %d: Service %s: %v", at, svc.Name, fe)
		}
		out[svc.Name] = at
	}
	return out
}

// TestDocs_DeadLetterSinkBeforeBroker: every Service the Broker and the
// Triggers in config/broker send to (dead-letter sinks, subscribers) is
// shipped in config/knative or created by docs/deployment.md; the
// dead-letter sinks before config/broker is applied. Knative keeps a Broker
// whose dead-letter sink does not resolve not Ready and then routes none
// of its Triggers (eventing v0.50.0, reconciler/broker/broker.go and
// trigger.go), and does not route a Trigger whose own dead-letter sink
// does not resolve: following the docs would route nothing.
func TestDocs_DeadLetterSinkBeforeBroker(t *testing.T) {
	apply := docLine(t, `^kubectl apply .*-f config/broker/?( |$)`)
	if apply == 0 {
		t.Fatal("docs/deployment.md never applies config/broker")
	}
	shipped := map[string]bool{}
	docs := docServices(t)
	type ref struct {
		from, name string
		dls        bool
	}
	var refs []ref
	add := func(from string, d *duckv1.Destination, dls bool) {
		if d != nil && d.Ref != nil && d.Ref.Kind == "Service" {
			refs = append(refs, ref{from, d.Ref.Name, dls})
		}
	}
	for _, d := range loadManifests(t) {
		switch o := d.obj.(type) {
		case *servingv1.Service:
			shipped[o.Name] = true
		case *eventingv1.Broker:
			if o.Spec.Delivery != nil {
				add("Broker "+o.Name, o.Spec.Delivery.DeadLetterSink, true)
			}
		case *eventingv1.Trigger:
			add("Trigger "+o.Name, &o.Spec.Subscriber, false)
			if o.Spec.Delivery != nil {
				add("Trigger "+o.Name, o.Spec.Delivery.DeadLetterSink, true)
			}
		}
	}
	if len(refs) == 0 {
		t.Fatal("config/broker sends to no Service")
	}
	for _, r := range refs {
		if shipped[r.name] {
			continue
		}
		line, ok := docs[r.name]
		switch {
		case !ok:
			t.Errorf("%s sends to Service %s, which neither config/knative nor docs/deployment.md creates", r.from, r.name)
		case r.dls && line > apply:
			t.Errorf("docs/deployment.md creates Service %s (line %d), the dead-letter sink of %s, after applying config/broker (line %d)", r.name, line, r.from, apply)
		}
	}
}

// deploymentDoc is docs/deployment.md, which the tests hold the manifests
// against.
func deploymentDoc(t *testing.T) []byte {
	t.Helper()
	doc, err := os.ReadFile("../../docs/deployment.md")
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestDocs_MetricsPortName: a PodMonitor names the port it scrapes, and
// in the pod Knative renames the container's port (containerPort 8080 in
// config/knative, unnamed) to its user port name. docs/deployment.md must
// give that name.
func TestDocs_MetricsPortName(t *testing.T) {
	doc := string(deploymentDoc(t))
	if !strings.Contains(strings.Join(strings.Fields(doc), " "), "port: "+servingv1.UserPortName) {
		t.Errorf("docs/deployment.md does not tell a PodMonitor to scrape the port %q, Knative's name for the container's port", servingv1.UserPortName)
	}
}

var (
	patchLoop = regexp.MustCompile(`(?m)^for s in ([^;]+); do\n\s*kubectl patch ksvc "\$s" -n (\S+) --type merge \\\n\s*-p '(.*)'\ndone$`)
	// shellNow is the shell's expansion inside the patch's JSON string.
	shellNow = regexp.MustCompile(`'"\$\([^)]*\)"'`)
)

// TestDocs_NewRevisionAfterSettingsChange: ingest and sync read their
// Secrets and ConfigMap once, at start, so docs/deployment.md has the
// operator give every shipped Service a new revision after changing one.
// Its kubectl patch must name each Service in config/knative, in the
// namespace the docs create, and change the revision template (what makes
// Knative start a revision) in a way Knative accepts.
func TestDocs_NewRevisionAfterSettingsChange(t *testing.T) {
	doc := string(deploymentDoc(t))
	m := patchLoop.FindStringSubmatch(doc)
	if m == nil {
		t.Fatal("docs/deployment.md gives no loop of kubectl patch ksvc that starts new revisions after a settings change")
	}
	if ns := docNamespace.FindStringSubmatch(doc); ns == nil || ns[1] != m[2] {
		t.Errorf("the patch runs in namespace %q, not the one docs/deployment.md creates (%v)", m[2], ns)
	}
	var patch servingv1.Service
	if err := yaml.UnmarshalStrict([]byte(shellNow.ReplaceAllString(m[3], "1780000000")), &patch); err != nil {
		t.Fatalf("the patch %s is no Service: %v", m[3], err)
	}
	added := patch.Spec.Template.Annotations
	if len(added) == 0 {
		t.Fatalf("the patch %s changes no annotation of the revision template: Knative starts no new revision", m[3])
	}
	named := map[string]bool{}
	for _, n := range strings.Fields(m[1]) {
		named[n] = true
	}
	ctx := webhookContext(t)
	for _, d := range loadManifests(t) {
		svc, ok := d.obj.(*servingv1.Service)
		if !ok {
			continue
		}
		if !named[d.name] {
			t.Errorf("the patch loop leaves out the Service %s (%s): its pods keep the old settings", d.name, d.file)
			continue
		}
		delete(named, d.name)
		p := svc.DeepCopy()
		p.SetNamespace(m[2])
		if p.Spec.Template.Annotations == nil {
			p.Spec.Template.Annotations = map[string]string{}
		}
		for k, v := range added {
			if _, ok := p.Spec.Template.Annotations[k]; ok {
				t.Errorf("%s: the patch's annotation %s is one the manifest sets", d.name, k)
			}
			p.Spec.Template.Annotations[k] = v
		}
		p.SetDefaults(apis.WithinParent(ctx, metav1.ObjectMeta{Namespace: m[2]}))
		if fe := p.Validate(ctx); fe != nil {
			t.Errorf("%s patched: Knative refuses it: %v", d.name, fe)
		}
	}
	for n := range named {
		t.Errorf("the patch loop names %s, which config/knative does not ship", n)
	}
}

// funcSection is docs/deployment.md's section on the func CLI.
func funcSection(t *testing.T) string {
	t.Helper()
	doc := string(deploymentDoc(t))
	start := strings.Index(doc, "\n## 5. With the func CLI")
	if start < 0 {
		t.Fatal("docs/deployment.md has no func CLI section")
	}
	section := doc[start:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	return section
}

// TestDocs_FuncPathAppliesThePingSources: the periodic sweep and the
// retry sweep come from the PingSources of config/knative, which send to
// the Broker, not to a Service. An operator who deploys the functions
// with func instead of step 4's manifests must still apply them, or no
// sweep ever runs: a failed user waits for its next change, and a change
// whose export was lost is never caught up. The func section must apply
// every shipped PingSource with kubectl, and none of the Services func
// replaces (their images are ko:// paths only ko resolves).
func TestDocs_FuncPathAppliesThePingSources(t *testing.T) {
	applyFile := regexp.MustCompile(`(?m)^kubectl apply .*-f config/(knative/\S+)`)
	applied := map[string]bool{} // as loadManifests names the files
	for _, m := range applyFile.FindAllStringSubmatch(funcSection(t), -1) {
		applied[path.Join("..", m[1])] = true
	}
	pings := 0
	for _, d := range loadManifests(t) {
		switch {
		case d.kind == "PingSource":
			pings++
			if !applied[d.file] {
				t.Errorf("docs/deployment.md, func CLI section: does not apply %s (PingSource %s): with func no sweep runs", d.file, d.name)
			}
		case applied[d.file] && (d.kind == "Service" || d.kind == "SinkBinding"):
			t.Errorf("docs/deployment.md, func CLI section: applies %s, whose %s %s is one of step 4's, not func's", d.file, d.kind, d.name)
		}
	}
	if pings == 0 {
		t.Error("no PingSource shipped in config/knative")
	}
}
