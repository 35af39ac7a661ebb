package doveadm_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// A doveadm-exec config doveadm cannot read is a configuration problem,
// reported at once with doveadm's reason, not the exit code 75 of a
// destination that is down, which sync retries for good (real Dovecot
// 2.3 and 2.4: "Fatal: Error reading configuration", "Fatal: Failed to
// read configuration"). A destination that is down stays exit code 75.
func TestIntegrationDovecot_ExecConfigUnreadable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: map[string]string{"u1": "pass"}})
			bin, err := in.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			x := doveadm.NewExec(bin, 30*time.Second)
			ctx := context.Background()
			missing := doveadm.Endpoint{Config: filepath.Join(in.Dir, "missing.conf")}
			_, err = x.Sync(ctx, missing, doveadm.SyncRequest{User: "u1", Destination: "tcp:127.0.0.1:1"})
			if rule := doveadm.Decide(err); rule.Action != doveadm.ReportConfig || rule.Class != "config_error" ||
				!strings.Contains(err.Error(), "could not read its configuration") || !strings.Contains(err.Error(), "missing.conf") {
				t.Errorf("dsync with a missing config: %v, rule %v; want a configuration problem naming the file", err, rule)
			}
			if doveadm.ExitCodeOf(err) != 75 {
				t.Errorf("exit code %d, want doveadm's 75", doveadm.ExitCodeOf(err))
			}
			err = x.ListUsers(ctx, missing, func(string) error { return nil })
			var de *doveadm.Error
			if !errors.As(err, &de) || de.Kind != doveadm.KindConfig {
				t.Errorf("listing with a missing config: %v, want KindConfig", err)
			}
			// The same doveadm with its config, to a destination nobody
			// listens on: still a temporary failure.
			_, err = x.Sync(ctx, doveadm.Endpoint{Config: in.ConfigPath}, doveadm.SyncRequest{User: "u1", Destination: "tcp:127.0.0.1:1"})
			if rule := doveadm.Decide(err); rule.Class != "tempfail" {
				t.Errorf("dsync to a closed port: %v, rule %v; want tempfail", err, rule)
			}
		})
	}
}
