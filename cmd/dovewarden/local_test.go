package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestLocal_ChangeRunsDsyncThroughTheEmbeddedBroker drives `dovewarden
// local` end to end with a fake doveadm: a Dovecot event posted to ingest
// goes through the embedded broker (real Trigger manifests) to the sync
// handler, which runs dsync and records the success in Redis.
func TestLocal_ChangeRunsDsyncThroughTheEmbeddedBroker(t *testing.T) {
	localChangeRunsDsync(t)
}

// TestLocal_RealRedis runs the same with a real Redis given by the
// settings of docs/configuration.md's "Redis connection": over TLS with a
// private CA and a client certificate, over a Unix socket, and found
// through a Sentinel, plain and over TLS. The status must be in that
// Redis.
func TestLocal_RealRedis(t *testing.T) {
	t.Run("tls", func(t *testing.T) {
		srv := redistest.StartWith(t, redistest.Options{TLS: true})
		localChangeRunsDsync(t, "--redis-url", srv.URL(), "--redis-ca-file", srv.TLS.CA,
			"--redis-cert-file", srv.TLS.Cert, "--redis-key-file", srv.TLS.Key)
		assertSucceededIn(t, srv)
	})
	t.Run("unix", func(t *testing.T) {
		srv := redistest.StartWith(t, redistest.Options{Unix: true})
		localChangeRunsDsync(t, "--redis-url", srv.URL())
		assertSucceededIn(t, srv)
	})
	t.Run("sentinel", func(t *testing.T) {
		primary := redistest.Start(t)
		redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
		sen := redistest.StartSentinel(t, primary, "dovewarden")
		localChangeRunsDsync(t, "--redis-url", sen.URL())
		assertSucceededIn(t, primary)
	})
	t.Run("sentinel over tls", func(t *testing.T) {
		primary := redistest.StartWith(t, redistest.Options{TLS: true})
		redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
		sen := redistest.StartSentinel(t, primary, "dovewarden")
		localChangeRunsDsync(t, "--redis-url", sen.URL(), "--redis-ca-file", sen.TLS.CA,
			"--redis-cert-file", sen.TLS.Cert, "--redis-key-file", sen.TLS.Key)
		assertSucceededIn(t, primary)
	})
}

func assertSucceededIn(t *testing.T, srv *redistest.Server) {
	t.Helper()
	v, err := srv.Client(t).HGet(context.Background(), state.UserKey("u1"), state.FieldLastSuccess).Result()
	if err != nil || v == "" {
		t.Fatalf("u1's last success in %s: %q, %v", srv.URL(), v, err)
	}
}

// startLocal runs `dovewarden local` with args added, against a fake
// doveadm server that lists users (for the sweep) and records every dsync
// in the returned tracker.
func startLocal(t *testing.T, users []string, args ...string) (base string, stop func() error, tr *doveadmtest.Tracker, stderr *safebuf.Buffer) {
	t.Helper()
	tr = doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	fake.SetUsers(users...)
	env, _, stderr := testEnv(map[string]string{
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "5s",
	}, "")
	base, stop = serve(t, env, stderr, append([]string{"local", "--listen", "127.0.0.1:0",
		"--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1"}, args...)...)
	return base, stop, tr, stderr
}

// localChangeRunsDsync starts `dovewarden local` with args added, posts a
// delivery of u1 and checks that u1 and the sweep's user got their dsyncs
// and u1 its status.
func localChangeRunsDsync(t *testing.T, args ...string) {
	t.Helper()
	// The sweep at start replicates users nobody changed yet.
	base, stop, tr, stderr := startLocal(t, []string{"u1", "quiet"}, args...)

	req, _ := http.NewRequest("POST", base+"/events", strings.NewReader(deliveryEvent))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /events: %d", resp.StatusCode)
	}

	deadline := time.Now().Add(10 * time.Second)
	for (len(tr.CallsOf("u1")) == 0 || len(tr.CallsOf("quiet")) == 0) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	calls := tr.CallsOf("u1")
	if len(calls) == 0 || calls[0].Destination != "tcp:127.0.0.1:1" {
		t.Fatalf("dsync calls %+v, want some to the destination\n%s", calls, stderr)
	}
	if q := tr.CallsOf("quiet"); len(q) != 1 || !q[0].Full {
		t.Errorf("the sweep at start: dsyncs of an unchanged user %+v, want one full sync", q)
	}

	var st struct {
		User        string    `json:"user"`
		LastSuccess time.Time `json:"last_success"`
	}
	for time.Now().Before(deadline) {
		resp, err = http.Get(base + "/status/u1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("status: %v: %s", err, body)
		}
		if !st.LastSuccess.IsZero() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.User != "u1" || st.LastSuccess.IsZero() {
		t.Errorf("status %+v", st)
	}
	resp, err = http.Get(base + "/status/-bad")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("hostile status name: %d", resp.StatusCode)
	}

	if err := stop(); err != nil {
		t.Fatalf("local returned %v", err)
	}
	if tr.Overlaps() != 0 {
		t.Error("overlapping dsyncs")
	}
}

// TestLocal_RefusesARedisClusterNode: the decision scripts cannot run on
// Redis Cluster, so a cluster node is refused at start, naming the
// setting, rather than failing every decision.
func TestLocal_RefusesARedisClusterNode(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{Cluster: true})
	env, _, _ := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password}, "")
	err := run(context.Background(), env, []string{"local", "--listen", "127.0.0.1:0", "--redis-url", srv.URL(),
		"--doveadm-url", "http://127.0.0.1:1/doveadm/v1", "--destination", "tcp:127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "redis-url") || !strings.Contains(err.Error(), "Redis Cluster") {
		t.Fatalf("local with a cluster node: %v, want a refusal naming redis-url and Redis Cluster", err)
	}
}
