package main

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

func testEnv(vars map[string]string, stdin string) (*environment, *safebuf.Buffer, *safebuf.Buffer) {
	out, errb := &safebuf.Buffer{}, &safebuf.Buffer{}
	return &environment{
		getenv: func(k string) string { return vars[k] },
		environ: func() []string {
			var kv []string
			for k, v := range vars {
				kv = append(kv, k+"="+v)
			}
			return kv
		},
		stdin:  strings.NewReader(stdin),
		stdout: out, stderr: errb,
	}, out, errb
}

const deliveryEvent = `{"event":"mail_delivery_finished","hostname":"mail-a.test","end_time":"2026-11-29T10:00:00.000001Z","categories":["service:lmtp"],"fields":{"user":"u1","message_id":"<m@test>"}}`

// serve runs the dovewarden command args in-process (args should make it
// listen on a loopback port 0) and returns its base URL once it listens,
// and stop, which cancels it and returns what run returned. The test's
// cleanup stops it too.
func serve(t *testing.T, env *environment, stderr *safebuf.Buffer, args ...string) (string, func() error) {
	t.Helper()
	addrc := make(chan net.Addr, 1)
	env.ready = func(a net.Addr) { addrc <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, env, args) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = fmt.Errorf("%s did not stop on cancel", args[0])
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case a := <-addrc:
		return "http://" + a.String(), stop
	case err := <-done:
		done <- err // for stop
		t.Fatalf("%s exited: %v\n%s", args[0], err, stderr)
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not start", args[0])
	}
	return "", stop
}

func TestIngest_ServesUntilCancelled(t *testing.T) {
	got := make(chan string, 1)
	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Ce-Subject") + "/" + r.Header.Get("Ce-Priority") + "/" + r.Header.Get("Ce-Region")
		w.WriteHeader(http.StatusAccepted)
	}))
	defer broker.Close()
	env, _, stderr := testEnv(map[string]string{
		"K_SINK":                      broker.URL,
		"K_CE_OVERRIDES":              `{"extensions":{"region":"eu"}}`,
		"DOVEWARDEN_LOG_FORMAT":       "json",
		"DOVEWARDEN_AUTH_TOKEN":       "t0k",
		"DOVEWARDEN_SEND_BUDGET":      "200ms",
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "2s",
	}, "")
	base, stop := serve(t, env, stderr, "ingest", "--listen", "127.0.0.1:0")
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	req, _ := http.NewRequest("POST", base+"/events", strings.NewReader(deliveryEvent))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer t0k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	if g := <-got; g != "u1/high/eu" {
		t.Errorf("broker got %q", g)
	}
	// The POST was answered after the counter moved, but read it the way
	// Prometheus would, without relying on that order.
	if m, ok := awaitMetric(t, base, `dovewarden_ingest_events_accepted_total{host="mail-a.test",priority="high"} 1`); !ok {
		t.Errorf("metrics lack the accepted event:\n%s", m)
	}
	if err := stop(); err != nil {
		t.Fatalf("ingest returned %v", err)
	}
	if !strings.Contains(stderr.String(), `"msg":"shutting down"`) {
		t.Errorf("no JSON shutdown log:\n%s", stderr)
	}
}

func TestIngest_ConfigErrorsNameTheSetting(t *testing.T) {
	for name, tc := range map[string]struct {
		vars map[string]string
		args []string
		want string
	}{
		"no broker":         {nil, nil, "broker-url"},
		"bad duration":      {map[string]string{"K_SINK": "http://b", "DOVEWARDEN_SEND_BUDGET": "soon"}, nil, "DOVEWARDEN_SEND_BUDGET"},
		"budget too long":   {map[string]string{"K_SINK": "http://b"}, []string{"--send-budget", "1m"}, "send-budget"},
		"budget too short":  {map[string]string{"K_SINK": "http://b"}, []string{"--send-budget", "1ns"}, "send-budget 1ns: want 10ms to 5s"},
		"backoff too short": {map[string]string{"K_SINK": "http://b"}, []string{"--send-backoff", "1ns"}, "send-backoff 1ns: want 1ms up to send-budget"},
		"backoff too long":  {map[string]string{"K_SINK": "http://b"}, []string{"--send-backoff", "1s"}, "send-backoff 1s: want 1ms up to send-budget (150ms)"},
		"half basic":        {map[string]string{"K_SINK": "http://b", "DOVEWARDEN_AUTH_USER": "dovecot"}, nil, "auth-password"},
		"bad overrides":     {map[string]string{"K_SINK": "http://b", "K_CE_OVERRIDES": "{"}, nil, "K_CE_OVERRIDES"},
		"bad CA certs":      {map[string]string{"K_SINK": "https://b", "K_CA_CERTS": "no certificate"}, nil, "K_CA_CERTS"},
		"bad log":           {map[string]string{"K_SINK": "http://b"}, []string{"--log-format", "xml"}, "log-format"},
		"bad listen":        {map[string]string{"K_SINK": "http://b"}, []string{"--listen", "8080"}, "listen"},
		"no connections":    {map[string]string{"K_SINK": "http://b", "DOVEWARDEN_MAX_CONNECTIONS": "0"}, nil, "max-connections 0"},
		"bad redis":         {map[string]string{"K_SINK": "http://b", "DOVEWARDEN_REDIS_URL": "http://u:secretpw@r"}, nil, "redis-url"},
		"missing file":      {map[string]string{"K_SINK": "http://b"}, []string{"--auth-token-file", "/nonexistent/token"}, "auth-token-file"},
		"redis CA alone":    {map[string]string{"K_SINK": "http://b", "DOVEWARDEN_REDIS_CA_FILE": "/etc/ssl/ca.crt"}, nil, "set without redis-url"},
		"redis CA, plain":   {map[string]string{"K_SINK": "http://b", "DOVEWARDEN_REDIS_URL": "redis://:secretpw@r/0"}, []string{"--redis-ca-file", "/etc/ssl/ca.crt"}, "redis-ca-file: needs a rediss:// redis-url"},
		"redis option":      {map[string]string{"K_SINK": "http://b", "DOVEWARDEN_REDIS_URL": "redis://r/0?master_name=dw&password=secretpw&pool=1"}, nil, "unexpected option: pool"},
		"stray arg":         {map[string]string{"K_SINK": "http://b"}, []string{"extra"}, "unexpected argument"},
	} {
		t.Run(name, func(t *testing.T) {
			env, _, _ := testEnv(tc.vars, "")
			err := run(context.Background(), env, append([]string{"ingest"}, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secretpw") {
				t.Errorf("error leaks a password: %v", err)
			}
		})
	}
}

func TestExplain_StdinAndExitCode(t *testing.T) {
	env, out, stderr := testEnv(nil, deliveryEvent+"\n"+`{"event":"mail_opened","hostname":"h","fields":{"user":"u1"}}`)
	if err := run(context.Background(), env, []string{"explain", "-"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"type": "org.dovewarden.mailbox.changed"`) || !strings.Contains(out.String(), "dropped: event_kind") {
		t.Errorf("output:\n%s", out)
	}
	if !strings.Contains(stderr.String(), "2 events: 1 changes, 1 dropped, 0 invalid") {
		t.Errorf("summary: %s", stderr)
	}
	env, _, _ = testEnv(nil, "nonsense")
	err := run(context.Background(), env, []string{"explain"})
	if exitCode(err) != 1 {
		t.Errorf("bad input: exit code %d (%v), want 1", exitCode(err), err)
	}
}

func TestRun_UnknownCommand(t *testing.T) {
	env, _, stderr := testEnv(nil, "")
	err := run(context.Background(), env, []string{"frobnicate"})
	if err == nil || !strings.Contains(stderr.String(), "commands:") {
		t.Errorf("err %v, usage %q", err, stderr)
	}
	if errors.Is(err, context.Canceled) {
		t.Error("unexpected cancel")
	}
}

// awaitMetric reads base's /metrics until it has the line want, for up to
// 5 s; it returns the last page read and whether it had the line.
func awaitMetric(t *testing.T, base, want string) ([]byte, bool) {
	t.Helper()
	var m []byte
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(m), want) {
			return m, true
		}
		if time.Now().After(deadline) {
			return m, false
		}
	}
}

// TestIngest_RedisOverTLS: ingest's own use of Redis (the clock that
// stamps changes, and the pending mark of a change the Broker refused)
// works over TLS with a private CA and a client certificate.
func TestIngest_RedisOverTLS(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer broker.Close()
	env, _, stderr := testEnv(map[string]string{
		"K_SINK":                      broker.URL,
		"DOVEWARDEN_SEND_BUDGET":      "100ms",
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "2s",
		"DOVEWARDEN_REDIS_URL":        srv.URL(),
		"DOVEWARDEN_REDIS_CA_FILE":    srv.TLS.CA,
		"DOVEWARDEN_REDIS_CERT_FILE":  srv.TLS.Cert,
		"DOVEWARDEN_REDIS_KEY_FILE":   srv.TLS.Key,
	}, "")
	base, stop := serve(t, env, stderr, "ingest", "--listen", "127.0.0.1:0")
	resp, err := http.Post(base+"/events", "application/json", strings.NewReader(deliveryEvent))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("POST with the Broker refusing: %d, want 503", resp.StatusCode)
	}
	if _, err := srv.Client(t).ZScore(context.Background(), state.PendingKey, "u1").Result(); err != nil {
		t.Fatalf("u1 pending in the TLS Redis: %v\n%s", err, stderr)
	}
	// With Redis, ingest (always running) reports what sync keeps there,
	// read at scrape time: alerts need them while sync scales to zero.
	mresp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	metrics := string(body)
	for _, want := range []string{"dovewarden_sync_pending_users 1\n", "dovewarden_sync_failing_users 0\n", "dovewarden_sweep_last_end_timestamp_seconds 0\n",
		"dovewarden_tls_file_load_failing{setting=\"redis-ca-file\"} 0\n", "dovewarden_tls_file_load_failing{setting=\"redis-cert-file\"} 0\n"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("ingest's /metrics lacks %q", want)
		}
	}
	// And when the client certificate presented to Redis expires.
	leaf, err := tls.LoadX509KeyPair(srv.TLS.Cert, srv.TLS.Key)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^dovewarden_redis_client_certificate_expiry_timestamp_seconds (\S+)$`).FindStringSubmatch(metrics)
	if m == nil {
		t.Errorf("ingest's /metrics lacks the Redis client certificate's expiry")
	} else if v, err := strconv.ParseFloat(m[1], 64); err != nil || int64(v) != leaf.Leaf.NotAfter.Unix() {
		t.Errorf("Redis client certificate expiry %s, want %d", m[1], leaf.Leaf.NotAfter.Unix())
	}
	if err := stop(); err != nil {
		t.Fatalf("ingest returned %v", err)
	}
}

// TestServingRoles_WarnOfSecretsInTheirArguments: a secret given as a
// flag, which every user of the machine can read in the process list, is
// named in a warning (never its value); the same secret from its
// environment variable is not.
func TestServingRoles_WarnOfSecretsInTheirArguments(t *testing.T) {
	const warning = "a secret is given as a command-line flag"
	cases := []struct {
		name string
		vars map[string]string
		args []string
		flag string
	}{
		{"ingest, flag", nil, []string{"ingest", "--listen", "127.0.0.1:0", "--broker-url", "http://127.0.0.1:1/",
			"--auth-user", "dovecot", "--auth-password", "s3cret-pw"}, "auth-password"},
		{"ingest, variable", map[string]string{"DOVEWARDEN_AUTH_PASSWORD": "s3cret-pw"}, []string{"ingest", "--listen", "127.0.0.1:0",
			"--broker-url", "http://127.0.0.1:1/", "--auth-user", "dovecot"}, ""},
		{"local, flag", nil, []string{"local", "--listen", "127.0.0.1:0", "--doveadm-url", "http://127.0.0.1:1/doveadm/v1",
			"--destination", "tcp:127.0.0.1:2", "--sweep-every", "0", "--doveadm-password", "s3cret-pw"}, "doveadm-password"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env, _, stderr := testEnv(c.vars, "")
			_, stop := serve(t, env, stderr, c.args...)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			out := stderr.String()
			if warned := strings.Contains(out, warning); warned != (c.flag != "") || c.flag != "" && !strings.Contains(out, "flag="+c.flag) {
				t.Errorf("warned %v, want a warning naming %q (none for \"\")\n%s", warned, c.flag, out)
			}
			if strings.Contains(out, "s3cret-pw") {
				t.Errorf("the secret is in the log:\n%s", out)
			}
		})
	}
}

// unusedWarnings are the lines of log that warn of a DOVEWARDEN_*
// variable that is no setting of the command.
func unusedWarnings(log string) []string {
	var warned []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "no setting of this command") {
			warned = append(warned, line)
		}
	}
	return warned
}

// TestIngest_WarnsOfUnknownSettings: a DOVEWARDEN_* variable that is no
// setting of the command (here misspelt) is named in a warning; the
// command's own settings and the variables read elsewhere are not.
func TestIngest_WarnsOfUnknownSettings(t *testing.T) {
	env, _, stderr := testEnv(map[string]string{
		"K_SINK":                      "http://127.0.0.1:1/",
		"DOVEWARDEN_SEND_BUDGET":      "100ms",
		"DOVEWARDEN_REDIS_ULR":        "redis://127.0.0.1:1/0",
		"DOVEWARDEN_PPROF_ADDR":       "127.0.0.1:0",
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "1s",
	}, "")
	_, stop := serve(t, env, stderr, "ingest", "--listen", "127.0.0.1:0")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	warned := unusedWarnings(stderr.String())
	if len(warned) != 1 || !strings.Contains(warned[0], "variable=DOVEWARDEN_REDIS_ULR") || !strings.Contains(warned[0], "command=ingest") {
		t.Errorf("warnings %q, want one naming DOVEWARDEN_REDIS_ULR and ingest", warned)
	}
}

// TestLocal_WarnsThatResultsSinkIsNotUsed: local mode sends to its own
// broker; a --results-sink (or DOVEWARDEN_RESULTS_SINK) it was given is
// named in a warning, its password hidden, instead of ignored in silence.
func TestLocal_WarnsThatResultsSinkIsNotUsed(t *testing.T) {
	env, _, stderr := testEnv(map[string]string{"DOVEWARDEN_RESULTS_SINK": "http://u:secret@127.0.0.1:1/", "DOVEWARDEN_DOVEADM_PASSWORD": "pw"}, "")
	_, stop := serve(t, env, stderr, "local", "--listen", "127.0.0.1:0", "--doveadm-url", "http://127.0.0.1:1/doveadm/v1",
		"--destination", "tcp:127.0.0.1:2", "--sweep-every", "0")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if out := stderr.String(); !strings.Contains(out, "results-sink is not used by dovewarden local") || strings.Contains(out, "secret") {
		t.Errorf("log %q: want the unused results-sink named, without its password", out)
	}
}

// TestLocal_WarnsThatKnownUsersNeedALastingRedis: --sweep-list known
// sweeps the users Redis has a record of, and the embedded Redis starts
// empty: the sweep at start then requests nobody, which the log says.
func TestLocal_WarnsThatKnownUsersNeedALastingRedis(t *testing.T) {
	for _, list := range []string{"known", "userdb"} {
		env, _, stderr := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": "pw"}, "")
		_, stop := serve(t, env, stderr, "local", "--listen", "127.0.0.1:0", "--doveadm-url", "http://127.0.0.1:1/doveadm/v1",
			"--destination", "tcp:127.0.0.1:2", "--sweep-every", "0", "--sweep-list", list)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if warned := strings.Contains(stderr.String(), "sweep-list known with the embedded Redis"); warned != (list == "known") {
			t.Errorf("--sweep-list %s: warned %v\n%s", list, warned, stderr)
		}
	}
}

// TestExplain_UnreadableInputExits2: a directory is input that cannot be
// read, like a missing file (exit code 2), not an invalid event (1).
func TestExplain_UnreadableInputExits2(t *testing.T) {
	env, _, stderr := testEnv(nil, "")
	err := run(context.Background(), env, []string{"explain", t.TempDir()})
	if exitCode(err) != 2 || strings.Contains(err.Error(), "not JSON") || !strings.Contains(stderr.String(), "0 invalid") {
		t.Errorf("explain DIR: exit code %d (%v), summary %q; want 2, no invalid event", exitCode(err), err, stderr)
	}
}

// With Knative's transport encryption the SinkBinding gives ingest an
// https K_SINK and the CA that signs the Broker's certificate in
// K_CA_CERTS: ingest trusts it, besides the system's CAs.
func TestIngest_KnativeCACerts(t *testing.T) {
	got := make(chan string, 1)
	broker := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Ce-Subject")
		w.WriteHeader(http.StatusAccepted)
	}))
	defer broker.Close()
	post := func(vars map[string]string) int {
		t.Helper()
		vars["K_SINK"] = broker.URL
		vars["DOVEWARDEN_SEND_BUDGET"] = "200ms"
		env, _, stderr := testEnv(vars, "")
		base, stop := serve(t, env, stderr, "ingest", "--listen", "127.0.0.1:0")
		defer stop()
		resp, err := http.Post(base+"/events", "application/json", strings.NewReader(deliveryEvent))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: broker.Certificate().Raw}))
	if code := post(map[string]string{"K_CA_CERTS": caPEM}); code != http.StatusAccepted {
		t.Fatalf("with K_CA_CERTS: %d", code)
	}
	if u := <-got; u != "u1" {
		t.Errorf("the Broker got subject %q", u)
	}
	if code := post(map[string]string{}); code < 500 {
		t.Errorf("without K_CA_CERTS: %d, want a 5xx (the Broker's certificate is not trusted)", code)
	}
	select {
	case u := <-got:
		t.Errorf("the Broker got %q from an ingest that may not trust it", u)
	default:
	}
}
