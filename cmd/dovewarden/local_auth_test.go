package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// TestLocal_CredentialsGuardEveryEndpoint: with ingest's credentials set
// (Basic or a token), local mode asks for them on ingest, the broker
// ingress and the status; only the probes and the metrics answer without.
// The sync handler's own post to the ingress (the replication.failed of an
// attempt it retries) carries them and reaches an alert webhook, and
// `dovewarden replicate` gets through with them and not without.
func TestLocal_CredentialsGuardEveryEndpoint(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		flags []string
		auth  func(*http.Request)
		// cli: replicate's way of giving the credentials, given the
		// ingress URL with and without them.
		cli func(plain, withUser string) []string
	}{
		{"basic", []string{"--auth-user", "dovecot", "--auth-password", "pa:ss"},
			func(r *http.Request) { r.SetBasicAuth("dovecot", "pa:ss") },
			func(_, withUser string) []string { return []string{"--broker-url", withUser} }},
		{"token", []string{"--auth-token-file", tokenFile},
			func(r *http.Request) { r.Header.Set("Authorization", "Bearer s3cret-token") },
			func(plain, _ string) []string {
				return []string{"--broker-url", plain, "--broker-token-file", tokenFile}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var alerts []string
			webhook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				alerts = append(alerts, r.Header.Get("Ce-Type")+" "+r.Header.Get("Ce-Subject"))
				mu.Unlock()
			}))
			defer webhook.Close()
			tr := doveadmtest.NewTracker(t)
			fake := doveadmtest.NewServer(t, "mail-a.test", tr)
			// The first dsync fails with a temporary error and is retried.
			fake.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75})
			env, _, stderr := testEnv(map[string]string{
				"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
				"DOVEWARDEN_SHUTDOWN_TIMEOUT": "5s",
				"DOVEWARDEN_SWEEP_EVERY":      "0",
			}, "")
			base, _ := serve(t, env, stderr, append([]string{"local", "--listen", "127.0.0.1:0",
				"--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1", "--retry-backoff", "10ms",
				"--subscriber", "dovewarden-alerts=" + webhook.URL}, tc.flags...)...)

			request, err := contract.Requested(change.Request{User: "dave"}, "test", "test/cli")
			if err != nil {
				t.Fatal(err)
			}
			ceBody, err := request.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			call := func(method, path, contentType, body string, withAuth bool) int {
				t.Helper()
				req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
				if contentType != "" {
					req.Header.Set("Content-Type", contentType)
				}
				if withAuth {
					tc.auth(req)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			for _, c := range []struct {
				method, path, contentType, body string
			}{
				{"POST", "/events", "application/json", deliveryEvent},
				{"POST", "/local/dovewarden", cloudevents.ApplicationCloudEventsJSON, string(ceBody)},
				{"GET", "/status/u1", "", ""},
				{"GET", "/status", "", ""},
			} {
				if got := call(c.method, c.path, c.contentType, c.body, false); got != http.StatusUnauthorized {
					t.Errorf("%s %s without credentials: HTTP %d, want 401", c.method, c.path, got)
				}
			}
			for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
				if got := call("GET", path, "", "", false); got != http.StatusOK {
					t.Errorf("GET %s without credentials: HTTP %d, want 200", path, got)
				}
			}
			if tr.Calls() != nil {
				t.Fatalf("dsyncs %+v after refused requests", tr.Calls())
			}

			if got := call("POST", "/events", "application/json", deliveryEvent, true); got != http.StatusAccepted {
				t.Fatalf("POST /events with credentials: HTTP %d\n%s", got, stderr)
			}
			deadline := time.Now().Add(10 * time.Second)
			for len(tr.CallsOf("u1")) < 2 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if calls := tr.CallsOf("u1"); len(calls) != 2 || calls[0].Reply.ExitCode != 75 || calls[1].Reply.ExitCode != 0 {
				t.Fatalf("dsyncs of u1 %+v, want a failure and its retry\n%s", calls, stderr)
			}
			for time.Now().Before(deadline) {
				mu.Lock()
				n := len(alerts)
				mu.Unlock()
				if n > 0 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			mu.Lock()
			got := strings.Join(alerts, ", ")
			mu.Unlock()
			if !strings.Contains(got, contract.TypeReplicationFailed+" u1") {
				t.Errorf("the alert webhook got %q, want the retried attempt's %s of u1\n%s", got, contract.TypeReplicationFailed, stderr)
			}
			for _, path := range []string{"/status/u1", "/status"} {
				if got := call("GET", path, "", "", true); got != http.StatusOK {
					t.Errorf("GET %s with credentials: HTTP %d", path, got)
				}
			}

			plain := base + "/local/dovewarden"
			withUser := strings.Replace(plain, "http://", "http://dovecot:pa%3Ass@", 1)
			cli, _, cliErr := testEnv(nil, "")
			err = run(context.Background(), cli, []string{"replicate", "--broker-url", plain, "carol"})
			if err == nil || !strings.Contains(err.Error(), "401") {
				t.Errorf("replicate without credentials: %v, want a 401", err)
			}
			if err := run(context.Background(), cli, append(append([]string{"replicate"}, tc.cli(plain, withUser)...), "carol")); err != nil {
				t.Fatalf("replicate with credentials: %v\n%s", err, cliErr)
			}
			for len(tr.CallsOf("carol")) == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if calls := tr.CallsOf("carol"); len(calls) != 1 {
				t.Errorf("dsyncs of carol %+v, want one", calls)
			}
		})
	}
}
