package validate

// The sync Services must start with the settings their manifests give
// them and the Secrets and ConfigMap docs/deployment.md has the operator
// create.

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"

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
	},
}

// writeConfigMap writes into dir the files a volume of cm mounts: its
// items, or every key.
func writeConfigMap(t *testing.T, dir string, cm *corev1.ConfigMapVolumeSource) {
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
		if err := os.WriteFile(filepath.Join(dir, path), []byte(data[key]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSyncServices_StartWithTheirSettings: each sync Service's settings,
// as its manifest gives them, are a configuration dovewarden sync starts
// with. Sync needs a default host (events and requests that name no host,
// hosts the host map lacks) besides the host map.
func TestSyncServices_StartWithTheirSettings(t *testing.T) {
	for _, name := range []string{"dovewarden-sync-high", "dovewarden-sync-low"} {
		env, args := containerEnv(t, serviceNamed(t, name))
		if len(args) == 0 || args[0] != "sync" {
			t.Fatalf("%s runs %q, not dovewarden sync", name, args)
		}
		if _, err := syncer.Load(flag.NewFlagSet("sync", flag.ContinueOnError), args[1:], func(k string) string { return env[k] }); err != nil {
			t.Errorf("%s does not start with its manifest's settings: %v", name, err)
		}
	}
}
