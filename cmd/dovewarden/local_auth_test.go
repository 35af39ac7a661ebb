package main

import (
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
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
	// Basic auth's password from a file, not in the URL on the command
	// line, which every local user's ps shows.
	passwordFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(passwordFile, []byte("pa:ss\n"), 0o600); err != nil {
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
		{"basic-file", []string{"--auth-user", "dovecot", "--auth-password", "pa:ss"},
			func(r *http.Request) { r.SetBasicAuth("dovecot", "pa:ss") },
			func(plain, _ string) []string {
				return []string{"--broker-url", plain, "--broker-user", "dovecot", "--broker-password-file", passwordFile}
			}},
		{"token", []string{"--auth-token-file", tokenFile},
			func(r *http.Request) { r.Header.Set("Authorization", "Bearer s3cret-token") },
			func(plain, _ string) []string {
				return []string{"--broker-url", plain, "--broker-token-file", tokenFile}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := startRetriedLocal(t, nil, tc.flags...)
			base, tr, stderr := l.base, l.tr, l.stderr

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
			l.awaitRetriedAlert(t)
			deadline := time.Now().Add(10 * time.Second)
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

// retriedLocal is a running `dovewarden local` whose fake doveadm fails
// the first dsync with a temporary error, which the sync handler retries,
// with an alert webhook as the dovewarden-alerts subscriber.
type retriedLocal struct {
	base   string
	stop   func() error
	tr     *doveadmtest.Tracker
	stderr *safebuf.Buffer

	mu     sync.Mutex
	alerts []string // the webhook's events: "TYPE SUBJECT"
}

// startRetriedLocal starts it, with vars added to its environment and
// args to its command line.
func startRetriedLocal(t *testing.T, vars map[string]string, args ...string) *retriedLocal {
	t.Helper()
	l := &retriedLocal{tr: doveadmtest.NewTracker(t)}
	webhook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.alerts = append(l.alerts, r.Header.Get("Ce-Type")+" "+r.Header.Get("Ce-Subject"))
		l.mu.Unlock()
	}))
	t.Cleanup(webhook.Close)
	fake := doveadmtest.NewServer(t, "mail-a.test", l.tr)
	fake.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75})
	all := map[string]string{
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "5s",
		"DOVEWARDEN_SWEEP_EVERY":      "0",
	}
	maps.Copy(all, vars)
	env, _, stderr := testEnv(all, "")
	l.stderr = stderr
	l.base, l.stop = serve(t, env, stderr, append([]string{"local", "--listen", "127.0.0.1:0",
		"--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1", "--retry-backoff", "10ms",
		"--subscriber", "dovewarden-alerts=" + webhook.URL}, args...)...)
	return l
}

// awaitRetriedAlert waits for u1's failed dsync and its retry, and for
// the webhook to get the failed attempt's replication.failed: the sync
// handler posts it to the broker ingress on local's own listener.
func (l *retriedLocal) awaitRetriedAlert(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	got := func() string {
		l.mu.Lock()
		defer l.mu.Unlock()
		return strings.Join(l.alerts, ", ")
	}
	for (len(l.tr.CallsOf("u1")) < 2 || got() == "") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if calls := l.tr.CallsOf("u1"); len(calls) != 2 || calls[0].Reply.ExitCode != 75 || calls[1].Reply.ExitCode != 0 {
		t.Fatalf("dsyncs of u1 %+v, want a failure and its retry\n%s", calls, l.stderr)
	}
	if !strings.Contains(got(), contract.TypeReplicationFailed+" u1") {
		t.Errorf("the alert webhook got %q, want the retried attempt's %s of u1\n%s", got(), contract.TypeReplicationFailed, l.stderr)
	}
}

// TestAuthFilesThatCannotAuthenticate_StopTheStart: ingest and local
// refuse to start when --auth-token-file is empty, only white space, or
// holds a token with white space (which no client can send), and when
// --auth-password-file is empty, naming the setting; an empty file must
// never turn authentication off.
func TestAuthFilesThatCannotAuthenticate_StopTheStart(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	empty, blank, spaced, emptyPw := file("empty", ""), file("blank", " \n"), file("spaced", "tok \n"), file("pw", "\n")
	roles := map[string][]string{
		"ingest": {"ingest", "--listen", "127.0.0.1:0", "--broker-url", "http://127.0.0.1:1"},
		"local": {"local", "--listen", "127.0.0.1:0", "--doveadm-url", "http://127.0.0.1:1",
			"--destination", "tcp:127.0.0.1:1", "--sweep-every", "0"},
	}
	for role, base := range roles {
		for name, tc := range map[string]struct {
			args []string
			want string
		}{
			"empty token file":    {[]string{"--auth-token-file", empty}, "auth-token-file " + empty + ": empty"},
			"blank token file":    {[]string{"--auth-token-file", blank}, "auth-token-file " + blank + ": empty"},
			"token with a space":  {[]string{"--auth-token-file", spaced}, "auth-token-file " + spaced + ": the token contains white space"},
			"empty password file": {[]string{"--auth-user", "dovecot", "--auth-password-file", emptyPw}, "auth-password-file " + emptyPw + ": empty"},
		} {
			t.Run(role+"/"+name, func(t *testing.T) {
				env, _, _ := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": "x"}, "")
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err := run(ctx, env, append(append([]string{}, base...), tc.args...))
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("%v, want an error with %q", err, tc.want)
				}
			})
		}
	}
}
