package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
)

// TestServingRoles_HostMapVariablesAreNoUnknownSettings: a host map entry
// takes its password from the variable its password_env names
// (docs/sync.md), whatever that name is. One that begins with DOVEWARDEN_
// is read, so the warning about variables that are no setting must not
// call it ignored: an administrator who believed it would remove it, and
// every dsync from that host would then fail authentication. A misspelt
// variable beside it is still named.
func TestServingRoles_HostMapVariablesAreNoUnknownSettings(t *testing.T) {
	hostMap := filepath.Join(t.TempDir(), "hosts.json")
	if err := os.WriteFile(hostMap, []byte(`{"mail-b.test": {"url": "http://127.0.0.1:1/doveadm/v1",
		"destination": "tcp:127.0.0.1:3", "password_env": "DOVEWARDEN_MAIL_B_PASSWORD",
		"api_key_env": ""}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t)
	common := []string{"--listen", "127.0.0.1:0", "--doveadm-url", "http://127.0.0.1:1/doveadm/v1",
		"--destination", "tcp:127.0.0.1:2", "--host-map-file", hostMap}
	for name, args := range map[string][]string{
		"sync":  append([]string{"sync", "--redis-url", srv.URL()}, common...),
		"local": append([]string{"local", "--sweep-every", "0"}, common...),
	} {
		t.Run(name, func(t *testing.T) {
			env, _, stderr := testEnv(map[string]string{
				"DOVEWARDEN_DOVEADM_PASSWORD": "pw-a",
				"DOVEWARDEN_MAIL_B_PASSWORD":  "pw-b",
				"DOVEWARDEN_LOCK_TLL":         "20s",
			}, "")
			_, stop := serve(t, env, stderr, args...)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			warned := unusedWarnings(stderr.String())
			if len(warned) != 1 || !strings.Contains(warned[0], "variable=DOVEWARDEN_LOCK_TLL") {
				t.Errorf("warnings %q, want one, naming DOVEWARDEN_LOCK_TLL only (DOVEWARDEN_MAIL_B_PASSWORD is the host map's)", warned)
			}
		})
	}
}
