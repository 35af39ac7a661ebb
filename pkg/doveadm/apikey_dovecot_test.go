package doveadm_test

import (
	"context"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// With an API key (doveadm_api_key, --doveadm-api-key) and no password,
// doveadm-http syncs and lists users on real Dovecot 2.3 and 2.4, which
// take the key as the Authorization header's X-Dovecot-API scheme; a
// wrong key is refused as credentials.
func TestIntegrationDovecot_APIKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	const key = "api-key-of-the-test-7f3a"
	users := map[string]string{"u1": "pass"}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users, ExtraConfig: "doveadm_api_key = " + key + "\n"})
			b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
			waitListening(t, a.DoveadmHTTPURL)
			s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Append(ctx, "INBOX", "", dovecottest.TestMessage("api key", "x"))
			s.Close()
			if err != nil {
				t.Fatal(err)
			}
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, APIKey: key, Destination: b.Destination}
			tr := doveadm.NewHTTP(nil, time.Minute)
			res, err := tr.Sync(ctx, ep, doveadm.SyncRequest{User: "u1", Destination: b.Destination, LockTimeout: 10 * time.Second})
			if err != nil || res.State == "" {
				t.Fatalf("sync with the API key: %+v, %v", res, err)
			}
			if got, want := messages(t, b, "u1"), messages(t, a, "u1"); got != want {
				t.Errorf("B has %s, A %s", got, want)
			}
			if got, err := collect(tr, ep); err != nil || len(got) != 1 || got[0] != "u1" {
				t.Errorf("listing with the API key: %q, %v", got, err)
			}
			ep.APIKey = "not-the-" + key
			_, err = tr.Sync(ctx, ep, doveadm.SyncRequest{User: "u1", Destination: b.Destination, LockTimeout: 10 * time.Second})
			if r := doveadm.Decide(err); r.Class != "unauthorized" {
				t.Errorf("a wrong API key: %v, class %s; want unauthorized", err, r.Class)
			}
		})
	}
}
