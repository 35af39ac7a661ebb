package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// TestRedisChecks_AtStart: sync and ingest warn at start, naming the
// setting, about a Redis that may evict their keys (a lock evicted lets
// two dsyncs of one user run at once), and keep serving; sync refuses a
// replica, which would answer every write with READONLY, and ingest, which
// serves Dovecot whatever Redis does, says so at error level.
func TestRedisChecks_AtStart(t *testing.T) {
	ctx := context.Background()
	primary := redistest.Start(t)
	pc := primary.Client(t)
	for _, kv := range [][2]string{{"maxmemory", "100mb"}, {"maxmemory-policy", "allkeys-lru"}} {
		if err := pc.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	replica := redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	vars := map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password}
	args := map[string][]string{
		"sync":   {"sync", "--listen", "127.0.0.1:0", "--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1"},
		"ingest": {"ingest", "--listen", "127.0.0.1:0", "--broker-url", "http://127.0.0.1:1"},
	}
	waitFor := func(t *testing.T, logs interface{ String() string }, want ...string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			all := true
			for _, w := range want {
				all = all && strings.Contains(logs.String(), w)
			}
			if all {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", want, logs)
			}
		}
	}
	for _, role := range []string{"sync", "ingest"} {
		t.Run(role+"/evicting", func(t *testing.T) {
			env, _, stderr := testEnv(vars, "")
			base, _ := serve(t, env, stderr, append(args[role], "--redis-url", primary.URL())...)
			waitFor(t, stderr, "level=WARN", "maxmemory-policy allkeys-lru", "set maxmemory-policy noeviction")
			assertServes(t, base)
		})
	}
	t.Run("sync/replica", func(t *testing.T) {
		env, _, stderr := testEnv(vars, "")
		err := run(ctx, env, append(args["sync"], "--redis-url", replica.URL()))
		if err == nil || !strings.Contains(err.Error(), "redis-url "+replica.URL()) || !strings.Contains(err.Error(), "replica (of "+primary.Addr+")") {
			t.Fatalf("sync on a replica: %v, want a refusal naming redis-url and the primary\n%s", err, stderr)
		}
	})
	t.Run("ingest/replica", func(t *testing.T) {
		env, _, stderr := testEnv(vars, "")
		base, _ := serve(t, env, stderr, append(args["ingest"], "--redis-url", replica.URL())...)
		waitFor(t, stderr, "level=ERROR", "replica (of "+primary.Addr+")", "pending marks will fail")
		assertServes(t, base)
	})
}

// assertServes: the role at base answers /readyz with 200.
func assertServes(t *testing.T, base string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %d", resp.StatusCode)
	}
}

// TestRedisMayEvict_ReadAtEachScrape: sync's dovewarden_redis_may_evict
// follows the server's setting as it changes after the start, which the
// start's warning cannot (CONFIG SET, a hosted Redis's maintenance).
// Ingest with --redis-url reports it too, as the other gauges read from
// Redis: it runs all the time, where the sync function scales to zero,
// and the alert's `for` needs a series without gaps.
func TestRedisMayEvict_ReadAtEachScrape(t *testing.T) {
	for _, role := range []string{"sync", "ingest"} {
		t.Run(role, func(t *testing.T) { redisMayEvict(t, role) })
	}
}

func redisMayEvict(t *testing.T, role string) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rc := srv.Client(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	env, _, stderr := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password}, "")
	args := []string{"sync", "--listen", "127.0.0.1:0", "--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1", "--redis-url", srv.URL()}
	if role == "ingest" {
		args = []string{"ingest", "--listen", "127.0.0.1:0", "--broker-url", "http://127.0.0.1:1", "--redis-url", srv.URL()}
	}
	base, _ := serve(t, env, stderr, args...)
	scrape := func() string {
		t.Helper()
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "dovewarden_redis_may_evict ") {
				return strings.TrimPrefix(line, "dovewarden_redis_may_evict ")
			}
		}
		return "no sample"
	}
	if got := scrape(); got != "0" {
		t.Fatalf("dovewarden_redis_may_evict %s on a server without maxmemory, want 0", got)
	}
	for _, kv := range [][2]string{{"maxmemory", "100mb"}, {"maxmemory-policy", "volatile-lru"}} {
		if err := rc.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if got := scrape(); got != "1" {
		t.Fatalf("dovewarden_redis_may_evict %s after CONFIG SET maxmemory-policy volatile-lru, want 1", got)
	}
	if err := rc.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if got := scrape(); got != "0" {
		t.Fatalf("dovewarden_redis_may_evict %s after CONFIG SET maxmemory-policy noeviction, want 0", got)
	}
}
