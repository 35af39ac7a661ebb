package validate

// The sync Services must start with the settings their manifests give
// them and the Secrets and ConfigMap docs/deployment.md has the operator
// create.

import (
	"encoding/json"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"

	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
	"github.com/dovewarden/dovewarden-knative/pkg/syncer"
)

// fakeConfigMaps are sample contents of the ConfigMaps the Services read,
// by name and key: an active-active pair, as docs/sync.md's host map.
var fakeConfigMaps = map[string]map[string]string{
	"dovewarden-host-map": {
		"host-map.json": `{
  "mail-a.example.org": {"url": "http://mail-a.example.org:8081/doveadm/v1", "destination": "tcp:mail-b.example.org:12345"},
  "mail-b.example.org": {"url": "http://mail-b.example.org:8081/doveadm/v1", "destination": "tcp:mail-a.example.org:12345"}
}`,
		"doveadm-url": "http://mail-a.example.org:8081/doveadm/v1",
		"destination": "tcp:mail-b.example.org:12345",
		// An optional key: the Services start with it as without it.
		"dsync-exclude-mailboxes": "Junk, Lists/*",
	},
}

// writeConfigMap writes into dir the files a volume of cm mounts: its
// items, or every key, each with its paths moved by relocate.
func writeConfigMap(t *testing.T, dir string, cm *corev1.ConfigMapVolumeSource, relocate func(string) string) {
	t.Helper()
	data, ok := fakeConfigMaps[cm.Name]
	if !ok {
		t.Fatalf("no sample contents for ConfigMap %s", cm.Name)
	}
	files := map[string]string{}
	for k := range data {
		files[k] = k
	}
	if len(cm.Items) > 0 {
		files = map[string]string{}
		for _, it := range cm.Items {
			files[it.Key] = it.Path
		}
	}
	for key, path := range files {
		if err := os.WriteFile(filepath.Join(dir, path), []byte(relocate(data[key])), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSyncServices_StartWithTheirSettings: each sync Service's settings,
// as its manifest gives them, are a configuration dovewarden sync starts
// with. Sync needs a default host (events and requests that name no host,
// hosts the host map lacks) besides the host map.
func TestSyncServices_StartWithTheirSettings(t *testing.T) {
	hostMap := fakeConfigMaps["dovewarden-host-map"]
	for _, optional := range []bool{true, false} {
		if !optional {
			without := maps.Clone(hostMap)
			delete(without, "dsync-exclude-mailboxes")
			fakeConfigMaps["dovewarden-host-map"] = without
			t.Cleanup(func() { fakeConfigMaps["dovewarden-host-map"] = hostMap })
		}
		for _, name := range []string{"dovewarden-sync-high", "dovewarden-sync-low"} {
			env, args := containerEnv(t, serviceNamed(t, name))
			if len(args) == 0 || args[0] != "sync" {
				t.Fatalf("%s runs %q, not dovewarden sync", name, args)
			}
			cfg, err := syncer.Load(flag.NewFlagSet("sync", flag.ContinueOnError), args[1:], func(k string) string { return env[k] })
			if err != nil {
				t.Errorf("%s does not start with its manifest's settings (optional keys: %v): %v", name, optional, err)
				continue
			}
			if want := map[bool]string{true: hostMap["dsync-exclude-mailboxes"]}[optional]; cfg.ExcludeMailboxes != want {
				t.Errorf("%s (optional keys: %v): dsync-exclude-mailboxes %q, want %q", name, optional, cfg.ExcludeMailboxes, want)
			}
		}
	}
}

// docsHostMap is the host map docs/sync.md gives (section "Host map"),
// which docs/deployment.md has the operator put in the ConfigMap
// dovewarden-host-map, and the hosts it names.
func docsHostMap(t *testing.T) (string, []string) {
	t.Helper()
	doc, err := os.ReadFile("../../docs/sync.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Host map\n")
	if !ok {
		t.Fatal(`docs/sync.md has no section "Host map"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, block, ok := strings.Cut(section, "\n```json\n")
	if !ok {
		t.Fatal(`docs/sync.md, "Host map": no json example`)
	}
	block, _, _ = strings.Cut(block, "\n```")
	var hosts map[string]json.RawMessage
	if err := json.Unmarshal([]byte(block), &hosts); err != nil {
		t.Fatalf(`docs/sync.md, "Host map": %v`, err)
	}
	var names []string
	for h := range hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	return block, names
}

// TestSyncServices_StartWithTheDocsHostMap: each sync Service starts with
// docs/sync.md's host map as the ConfigMap's host-map.json, mounted where
// its manifest mounts it. A file the map names (password_file,
// api_key_file) must be one the Service's pods mount: sync does not start
// when it is missing.
func TestSyncServices_StartWithTheDocsHostMap(t *testing.T) {
	example, hosts := docsHostMap(t)
	if len(hosts) == 0 {
		t.Fatal(`docs/sync.md, "Host map": the example names no host`)
	}
	saved := fakeConfigMaps["dovewarden-host-map"]
	withDocs := maps.Clone(saved)
	withDocs["host-map.json"] = example
	fakeConfigMaps["dovewarden-host-map"] = withDocs
	t.Cleanup(func() { fakeConfigMaps["dovewarden-host-map"] = saved })
	for _, name := range []string{"dovewarden-sync-high", "dovewarden-sync-low"} {
		env, args := containerEnv(t, serviceNamed(t, name))
		cfg, err := syncer.Load(flag.NewFlagSet("sync", flag.ContinueOnError), args[1:], func(k string) string { return env[k] })
		if err != nil {
			t.Errorf("%s does not start with docs/sync.md's host map: %v", name, err)
			continue
		}
		if got := cfg.HostMap().Hosts(); !slices.Equal(got, hosts) {
			t.Errorf("%s: host map names %v, want docs/sync.md's %v", name, got, hosts)
		}
	}
}

// queueProxyDrain is how long Knative's queue-proxy, told to stop, waits
// for a quiet spell without new requests before the user container's
// preStop hook returns and the container gets SIGTERM
// (drainSleepDuration, serving v0.50.0 pkg/queue/sharedmain/main.go).
const queueProxyDrain = 30 * time.Second

// handBack is how long dovewarden's server waits, after --shutdown-timeout,
// for the requests it cancelled to answer (pkg/server's drain).
const handBack = 10 * time.Second

// TestSyncServices_ShutdownLetsDsyncsFinish: when Knative stops a sync pod
// (a scale-down, a new revision), every event it is working on gets its
// answer, not a cut-off dsync the Broker then starts again elsewhere. The
// container gets SIGTERM only after queue-proxy's drain; from then
// --shutdown-timeout must cover the longest answer (--write-timeout), and
// drain, shutdown and hand-back must fit in the grace period Knative gives
// the pod: timeoutSeconds, as defaulted (serving v0.50.0
// pkg/reconciler/revision/resources/deploy.go, BuildPodSpec, sets the
// pod's terminationGracePeriodSeconds to it).
func TestSyncServices_ShutdownLetsDsyncsFinish(t *testing.T) {
	ctx := webhookContext(t)
	for _, name := range []string{"dovewarden-sync-high", "dovewarden-sync-low"} {
		svc := serviceNamed(t, name).DeepCopy()
		svc.SetNamespace("dovewarden")
		svc.SetDefaults(apis.WithinParent(ctx, metav1.ObjectMeta{Namespace: "dovewarden"}))
		env, args := containerEnv(t, svc)
		c, err := syncer.Load(flag.NewFlagSet("sync", flag.ContinueOnError), args[1:], func(k string) string { return env[k] })
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ts := svc.Spec.Template.Spec.TimeoutSeconds
		if ts == nil {
			t.Fatalf("%s: no timeoutSeconds after Knative's defaulting", name)
		}
		grace := time.Duration(*ts) * time.Second
		if sd := c.Server.ShutdownTimeout; sd < c.WriteTimeout {
			t.Errorf("%s: shutdown-timeout %s is below write-timeout %s: a stop cuts off the dsyncs still running", name, sd, c.WriteTimeout)
		}
		if need := queueProxyDrain + c.Server.ShutdownTimeout + handBack; need > grace {
			t.Errorf("%s: queue-proxy's drain %s, shutdown-timeout %s and the hand-back %s take %s, over the pod's grace period %s (timeoutSeconds)",
				name, queueProxyDrain, c.Server.ShutdownTimeout, handBack, need, grace)
		}
	}
}

// TestIngestService_StopOutlastsTheDrain: a stopping ingest pod serves
// Dovecot's events through queue-proxy's drain, while routes move away,
// and then its own shutdown. Knative makes timeoutSeconds the pod's grace
// period: one shorter than that kills the pod (SIGKILL) while events may
// still be routed to it, and Dovecot never sends them again.
func TestIngestService_StopOutlastsTheDrain(t *testing.T) {
	ctx := webhookContext(t)
	svc := serviceNamed(t, "dovewarden-ingest").DeepCopy()
	svc.SetNamespace("dovewarden")
	svc.SetDefaults(apis.WithinParent(ctx, metav1.ObjectMeta{Namespace: "dovewarden"}))
	env, args := containerEnv(t, svc)
	env["K_SINK"] = "http://127.0.0.1:9/" // the SinkBinding injects it
	c, err := ingest.Load(flag.NewFlagSet("ingest", flag.ContinueOnError), args[1:], func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ts := svc.Spec.Template.Spec.TimeoutSeconds
	if ts == nil {
		t.Fatal("no timeoutSeconds after Knative's defaulting")
	}
	if need, grace := queueProxyDrain+c.Server.ShutdownTimeout+handBack, time.Duration(*ts)*time.Second; need > grace {
		t.Errorf("queue-proxy's drain %s, shutdown-timeout %s and the hand-back %s take %s, over the pod's grace period %s (timeoutSeconds)",
			queueProxyDrain, c.Server.ShutdownTimeout, handBack, need, grace)
	}
}
