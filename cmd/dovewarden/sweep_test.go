package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// recordingBroker is a Broker ingress that takes up to n CloudEvents
// (202) and hands them to the test on got.
func recordingBroker(t *testing.T, n int) (broker *httptest.Server, got chan cloudevents.Event) {
	got = make(chan cloudevents.Event, n)
	broker = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := cloudevents.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		got <- *ev
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(broker.Close)
	return broker, got
}

func TestSweep_PostsOneSweepRequestedToTheBroker(t *testing.T) {
	broker, got := recordingBroker(t, 2)
	env, stdout, stderr := testEnv(map[string]string{
		"K_SINK":            broker.URL,
		"K_CE_OVERRIDES":    `{"extensions":{"region":"eu"}}`,
		"DOVEWARDEN_REASON": "after-maintenance",
	}, "")

	if err := run(context.Background(), env, []string{"sweep"}); err != nil {
		t.Fatalf("sweep: %v\n%s", err, stderr)
	}

	ev := <-got
	d, err := contract.ToSweep(ev)
	if err != nil || d.Reason != "after-maintenance" || d.Sweep != "" || d.All {
		t.Errorf("data %+v, %v", d, err)
	}
	if ev.Source() != "dovewarden/cli" || ev.Extensions()["priority"] != "low" || ev.Extensions()["region"] != "eu" {
		t.Errorf("event %v", ev)
	}
	if !strings.Contains(stdout.String(), "sweep.requested "+ev.ID()+" sent to "+broker.URL) {
		t.Errorf("stdout %q", stdout)
	}
	if len(got) != 0 {
		t.Error("more than one event")
	}
}

// TestSweep_All asks for a sweep of every user.
func TestSweep_All(t *testing.T) {
	broker, got := recordingBroker(t, 1)
	env, _, stderr := testEnv(map[string]string{"K_SINK": broker.URL}, "")
	if err := run(context.Background(), env, []string{"sweep", "--all"}); err != nil {
		t.Fatalf("sweep --all: %v\n%s", err, stderr)
	}
	if d, err := contract.ToSweep(<-got); err != nil || !d.All || d.Reason != "cli" {
		t.Errorf("data %+v, %v; want all", d, err)
	}
}

// TestSweep_AllIsNoRetrySweep: --all with the reason of dovewarden's retry
// sweep, which lists no host and so requests the failed and pending users
// alone, is refused before anything is sent, rather than reported sent
// while every other user waits for the next sweep that lists them.
func TestSweep_AllIsNoRetrySweep(t *testing.T) {
	broker, got := recordingBroker(t, 2)
	env, stdout, _ := testEnv(map[string]string{"K_SINK": broker.URL}, "")
	err := run(context.Background(), env, []string{"sweep", "--all", "--reason", "retry"})
	if err == nil || !strings.Contains(err.Error(), "retry sweep lists no host") || exitCode(err) != 2 {
		t.Errorf("sweep --all --reason retry: %v; want a refusal (exit 2)", err)
	}
	if len(got) != 0 || stdout.String() != "" {
		t.Errorf("sweep --all --reason retry sent %d events, printed %q; want none", len(got), stdout)
	}
	// A retry sweep alone is what the retry PingSource sends.
	env, _, _ = testEnv(map[string]string{"K_SINK": broker.URL}, "")
	if err := run(context.Background(), env, []string{"sweep", "--reason", "retry"}); err != nil {
		t.Fatalf("sweep --reason retry: %v", err)
	}
	if d, err := contract.ToSweep(<-got); err != nil || d.Reason != "retry" || d.All {
		t.Errorf("data %+v, %v; want a retry sweep", d, err)
	}
}

func TestSweep_Failures(t *testing.T) {
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusBadRequest)
	}))
	defer refusing.Close()
	withPassword := strings.Replace(refusing.URL, "http://", "http://u:hunter2@", 1)
	emptyToken := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(emptyToken, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		vars map[string]string
		args []string
		want string
	}{
		"no broker":       {nil, nil, "broker-url: not set"},
		"not a url":       {nil, []string{"--broker-url", "ftp://x"}, "broker-url"},
		"broker refuses":  {map[string]string{"K_SINK": withPassword}, nil, "HTTP 400"},
		"bad reason":      {map[string]string{"K_SINK": refusing.URL}, []string{"--reason", "a\nb"}, "reason"},
		"stray argument":  {map[string]string{"K_SINK": refusing.URL}, []string{"now"}, "unexpected argument"},
		"no time to send": {map[string]string{"K_SINK": refusing.URL}, []string{"--timeout", "0s"}, "timeout"},
		"no token file":   {map[string]string{"K_SINK": refusing.URL}, []string{"--broker-token-file", emptyToken + ".missing"}, "broker-token-file"},
		"empty token":     {map[string]string{"K_SINK": refusing.URL}, []string{"--broker-token-file", emptyToken}, "broker-token-file"},
	} {
		env, _, _ := testEnv(tt.vars, "")
		err := run(context.Background(), env, append([]string{"sweep"}, tt.args...))
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: err %v, want %q", name, err, tt.want)
		}
	}
	// Knative's variables are named first, not as a fault of broker-url.
	for name, v := range map[string]string{"K_CE_OVERRIDES": "{", "K_CA_CERTS": "not a certificate"} {
		env, _, _ := testEnv(map[string]string{"K_SINK": refusing.URL, name: v}, "")
		if err := run(context.Background(), env, []string{"sweep"}); err == nil || !strings.HasPrefix(err.Error(), name+":") {
			t.Errorf("%s %q: err %v, want it to start with %s", name, v, err, name)
		}
	}
}

// TestSweep_ThroughTheLocalBroker: `dovewarden sweep` against `dovewarden
// local`: the embedded broker routes the request by the real `sweep`
// Trigger to sync, feeds the continuations (sync's replies) back, and
// routes the sweep's replication requests to the low lane, where they run
// dsync: every listed user once. (Local mode's own sweep at start lists
// the host first, before it has users.)
func TestSweep_ThroughTheLocalBroker(t *testing.T) {
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	var users []string
	for i := range 20 {
		users = append(users, fmt.Sprintf("u%02d", i))
	}
	env, _, stderr := testEnv(map[string]string{
		"DOVEWARDEN_DOVEADM_PASSWORD":     doveadmtest.Password,
		"DOVEWARDEN_SHUTDOWN_TIMEOUT":     "5s",
		"DOVEWARDEN_SWEEP_BATCH_SIZE":     "6",
		"DOVEWARDEN_SWEEP_BATCH_INTERVAL": "10ms",
	}, "")
	base, _ := serve(t, env, stderr, "local", "--listen", "127.0.0.1:0", "--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1")
	for start := time.Now(); fake.ListCalls() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("local mode's sweep at start listed no host\n%s", stderr)
		}
	}
	fake.SetUsers(users...)

	cli, _, cliErr := testEnv(nil, "")
	if err := run(context.Background(), cli, []string{"sweep", "--broker-url", base + "/local/dovewarden"}); err != nil {
		t.Fatalf("sweep: %v\n%s", err, cliErr)
	}

	deadline := time.Now().Add(20 * time.Second)
	for len(tr.Calls()) < len(users) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, u := range users {
		if calls := tr.CallsOf(u); len(calls) != 1 || !calls[0].Full {
			t.Errorf("%s: dsyncs %+v, want one full sync (never replicated)", u, calls)
		}
	}
	if fake.ListCalls() != 2 {
		t.Errorf("%d listings, want the sweep at start's and this one's", fake.ListCalls())
	}
	if t.Failed() {
		t.Logf("local's log:\n%s", stderr)
	}
}

// TestSweep_RefusedCredentialsNameTheSettings: a Broker that answers 401
// gets a message naming where the credentials go, without the password,
// and without the SDK's bare "401: " after the status.
func TestSweep_RefusedCredentialsNameTheSettings(t *testing.T) {
	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer broker.Close()
	url := strings.Replace(broker.URL, "http://", "http://dovecot:wrongpw@", 1)
	for _, cmd := range [][]string{{"sweep"}, {"replicate", "alice"}} {
		env, _, _ := testEnv(map[string]string{"K_SINK": url}, "")
		err := run(context.Background(), env, cmd)
		if err == nil || !strings.Contains(err.Error(), "answered HTTP 401 (credentials: broker-user and broker-password-file, a user and password in broker-url, or broker-token-file)") ||
			strings.Contains(err.Error(), "wrongpw") {
			t.Errorf("%s: %v", cmd[0], err)
		}
	}
}

// fullWriter is standard output on a full disk (ENOSPC, as /dev/full).
type fullWriter struct{}

func (fullWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

// sweep and replicate whose line cannot be written fail (exit 2, as
// docs/configuration.md lists output that cannot be written), though the
// Broker took the event: a script that checks only the exit code, or
// reads the event's id from the output, would go on without it.
func TestSweepAndReplicate_OutputThatCannotBeWrittenFails(t *testing.T) {
	for _, args := range [][]string{{"sweep"}, {"replicate", "u1"}} {
		t.Run(args[0], func(t *testing.T) {
			broker, got := recordingBroker(t, 1)
			env, _, _ := testEnv(map[string]string{"K_SINK": broker.URL}, "")
			env.stdout = fullWriter{}
			err := run(context.Background(), env, args)
			if err == nil || !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("%s with standard output full: %v; want the write's error", args[0], err)
			}
			if len(got) != 1 {
				t.Errorf("%d events sent; want 1", len(got))
			}
		})
	}
}
