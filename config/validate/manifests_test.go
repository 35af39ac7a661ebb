// Package validate checks every manifest under config/ with Knative's own
// API types: each document is decoded strictly into its type, defaulted and
// validated exactly as the Knative webhook would, and the Triggers' filters
// are evaluated with Knative's own filter implementation. It is a module of
// its own so the heavy Knative packages stay out of the dovewarden binary.
package validate

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/pkg/apis"
	"sigs.k8s.io/yaml"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// object is what every Knative type here implements.
type object interface {
	SetDefaults(context.Context)
	Validate(context.Context) *apis.FieldError
}

func newObject(apiVersion, kind string) (object, error) {
	switch apiVersion + "/" + kind {
	case "eventing.knative.dev/v1/Broker":
		return &eventingv1.Broker{}, nil
	case "eventing.knative.dev/v1/Trigger":
		return &eventingv1.Trigger{}, nil
	case "sources.knative.dev/v1/PingSource":
		return &sourcesv1.PingSource{}, nil
	case "sources.knative.dev/v1/SinkBinding":
		return &sourcesv1.SinkBinding{}, nil
	case "serving.knative.dev/v1/Service":
		return &servingv1.Service{}, nil
	}
	return nil, fmt.Errorf("no Knative type for %s %s", apiVersion, kind)
}

// document is one YAML document of a manifest file.
type document struct {
	file, kind, name string
	obj              object
}

var separator = regexp.MustCompile(`(?m)^---\s*$`)

func loadManifests(t *testing.T) []document {
	t.Helper()
	var files []string
	for _, dir := range []string{"../knative", "../broker"} {
		m, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no manifests found")
	}
	var docs []document
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, part := range separator.Split(string(raw), -1) {
			if strings.TrimSpace(stripComments(part)) == "" {
				continue
			}
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(part), &meta); err != nil {
				t.Fatalf("%s document %d: %v", file, i+1, err)
			}
			obj, err := newObject(meta.APIVersion, meta.Kind)
			if err != nil {
				t.Fatalf("%s document %d: %v", file, i+1, err)
			}
			// Strict: a misspelt field is an error, not silently ignored.
			if err := yaml.UnmarshalStrict([]byte(part), obj); err != nil {
				t.Fatalf("%s %s %s: %v", file, meta.Kind, meta.Metadata.Name, err)
			}
			docs = append(docs, document{file: file, kind: meta.Kind, name: meta.Metadata.Name, obj: obj})
		}
	}
	return docs
}

func stripComments(s string) string {
	var b bytes.Buffer
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// webhookContext is the context Knative's webhook validates in: with the
// default feature flags, and as a create.
func webhookContext(t *testing.T) context.Context {
	t.Helper()
	flags, err := feature.NewFlagsConfigFromMap(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := feature.ToContext(context.Background(), flags)
	return apis.WithinCreate(ctx)
}

func TestManifests_DefaultAndValidate(t *testing.T) {
	ctx := webhookContext(t)
	for _, d := range loadManifests(t) {
		t.Run(d.kind+"/"+d.name, func(t *testing.T) {
			// kubectl apply -n NAMESPACE fills the namespace before the
			// webhook defaults references from it.
			d.obj.(interface{ SetNamespace(string) }).SetNamespace("dovewarden")
			d.obj.SetDefaults(apis.WithinParent(ctx, metav1.ObjectMeta{Namespace: "dovewarden"}))
			// No errors and no warnings either: a Service without a proper
			// securityContext would only warn.
			if fe := d.obj.Validate(ctx); fe != nil {
				t.Errorf("%s: %v", d.file, fe)
			}
		})
	}
}

func TestManifests_Names(t *testing.T) {
	seen := map[string]bool{}
	for _, d := range loadManifests(t) {
		key := d.kind + "/" + d.name
		if seen[key] {
			t.Errorf("%s declared twice", key)
		}
		seen[key] = true
	}
	for _, want := range []string{"Broker/dovewarden", "Trigger/sync-high", "Trigger/sync-low", "Trigger/sweep",
		"Trigger/replication-failed-alert", "Service/dovewarden-ingest", "SinkBinding/dovewarden-ingest", "PingSource/dovewarden-sweep", "PingSource/dovewarden-retry",
		"Service/dovewarden-sync-high", "Service/dovewarden-sync-low", "SinkBinding/dovewarden-sync-high", "SinkBinding/dovewarden-sync-low"} {
		if !seen[want] {
			t.Errorf("missing %s", want)
		}
	}
}

// TestManifests_ContainersLockedDown: every container of the shipped
// Services runs as a user other than root, may not gain privileges, holds
// no capability, runs under the runtime's seccomp profile and cannot
// write its own root filesystem. dovewarden writes no file in these
// roles (only the standalone broker's spool file, which no Service here
// runs), so a read-only root costs nothing and keeps an attacker who got
// code running from changing the image.
func TestManifests_ContainersLockedDown(t *testing.T) {
	for _, d := range shippedServices(t) {
		for _, c := range d.svc.Spec.Template.Spec.Containers {
			sc := c.SecurityContext
			where := fmt.Sprintf("%s: Service %s, container %s", d.file, d.name, c.Name)
			if sc == nil {
				t.Errorf("%s: no securityContext", where)
				continue
			}
			if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Errorf("%s: runAsNonRoot is not true", where)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation is not false", where)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: readOnlyRootFilesystem is not true", where)
			}
			if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
				t.Errorf("%s: capabilities are not drop [ALL]", where)
			}
			if sc.SeccompProfile == nil || sc.SeccompProfile.Type != "RuntimeDefault" {
				t.Errorf("%s: seccompProfile is not RuntimeDefault", where)
			}
		}
	}
}

// TestManifests_NoServiceAccountToken: no shipped Service's pods get the
// namespace's service account token. Neither ingest nor sync talks to the
// Kubernetes API (they reach Redis, the Broker and doveadm), so the token
// kubelet mounts by default would only serve someone who got code running
// in a pod, with whatever the namespace's default service account may do.
// Knative accepts automountServiceAccountToken only as false; a
// SinkBinding's OIDC token comes in a projected volume of its own.
func TestManifests_NoServiceAccountToken(t *testing.T) {
	for _, d := range shippedServices(t) {
		if a := d.svc.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || *a {
			t.Errorf("%s: Service %s: automountServiceAccountToken is not false: its pods get a Kubernetes API token they never use", d.file, d.name)
		}
	}
}

// serviceDoc is a shipped Knative Service and the document it came from.
type serviceDoc struct {
	document
	svc *servingv1.Service
}

// shippedServices is every Knative Service of the manifests; a test of
// them fails when there is none.
func shippedServices(t *testing.T) []serviceDoc {
	t.Helper()
	var out []serviceDoc
	for _, d := range loadManifests(t) {
		if svc, ok := d.obj.(*servingv1.Service); ok {
			out = append(out, serviceDoc{d, svc})
		}
	}
	if len(out) == 0 {
		t.Fatal("no Service found")
	}
	return out
}
