package dovecottest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestReplicatorSettingsStop24 pins what docs/deployment.md ("Coming
// from Dovecot 2.3's replicator") tells an administrator who upgrades:
// Dovecot 2.4 refuses to start with any of 2.3's replicator settings in
// its configuration, so they must go; 2.3 takes them all.
func TestReplicatorSettingsStop24(t *testing.T) {
	needRoot(t)
	settings := []string{
		"plugin {\n  mail_replica = tcp:mail-b.test:12345\n}\n",
		"replication_full_sync_interval = 1d\n",
		"replication_max_conns = 10\n",
		"replication_dsync_parameters = -d -N -l 30 -U\n",
	}
	start := func(v, config string) error {
		in, err := dovecottest.Start(context.Background(), dovecottest.Options{Version: v, Name: "mail-a.test",
			Users: map[string]string{"u1": "pass"}, ExtraConfig: config})
		if err == nil {
			in.Stop()
		}
		return err
	}
	if err := start(dovecottest.V23, strings.Join(settings, "")); err != nil {
		t.Errorf("Dovecot 2.3 with its replicator settings: %v", err)
	}
	for _, s := range settings {
		if err := start(dovecottest.V24, s); err == nil {
			t.Errorf("Dovecot 2.4 started with %q", s)
		}
	}
}
