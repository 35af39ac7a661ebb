package doveadm_test

import (
	"context"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// A destination port that is no TCP port, with real Dovecot 2.3 and 2.4
// and both transports: every dsync fails as it would with the replica
// down (exit code 75, "Port not known" or "Invalid port number"; 2.3's
// HTTP API closes the connection without an answer), retried for good.
// So the start refuses such a destination (Validate).
func TestIntegrationDovecot_DestinationPortOutOfRange(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: map[string]string{"u1": "pass"}})
			waitListening(t, a.DoveadmHTTPURL)
			bin, err := a.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			for _, dest := range []string{"tcp:127.0.0.1:0", "tcp:127.0.0.1:65536"} {
				ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword, Config: a.ConfigPath, Destination: dest}
				for _, tr := range []struct {
					name string
					t    doveadm.Transport
				}{{"doveadm-http", doveadm.NewHTTP(nil, time.Minute)}, {"doveadm-exec", doveadm.NewExec(bin, time.Minute)}} {
					_, err := tr.t.Sync(ctx, ep, doveadm.SyncRequest{User: "u1", Destination: dest, LockTimeout: 10 * time.Second})
					if r := doveadm.Decide(err); err == nil || !r.Retryable || (r.Class != doveadm.ClassTempfail && r.Class != "transport") {
						t.Errorf("%s, %s: %v, rule %v; want a failure retried as a replica that is down", dest, tr.name, err, r)
					}
				}
				if err := doveadm.NewHostMap(ep).Validate(doveadm.TransportHTTP); err == nil {
					t.Errorf("%s: taken at start", dest)
				}
			}
		})
	}
}
