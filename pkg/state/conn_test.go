package state_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

func TestConn_Validate(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, _, err := ca.Issue(dir, testcert.Leaf{Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	encrypted := filepath.Join(dir, "encrypted.key")
	if err := os.WriteFile(encrypted, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		conn state.Conn
		want string // "" for valid
	}{
		{"plain", state.Conn{URL: "redis://127.0.0.1:6379/0"}, ""},
		{"tls with the system's CAs", state.Conn{URL: "rediss://redis.example:6380/0"}, ""},
		{"unix socket", state.Conn{URL: "unix:///run/redis/redis.sock?db=1"}, ""},
		{"sentinel", state.Conn{URL: "redis://:sentinelpw@127.0.0.1:26379/0?master_name=dw&addr=127.0.0.2:26379&password=s3cret"}, ""},
		{"http", state.Conn{URL: "http://127.0.0.1:6379"}, "redis-url: want redis://, rediss:// or unix://"},
		{"no scheme", state.Conn{URL: "127.0.0.1:6379"}, "redis-url: want redis://, rediss:// or unix://"},
		{"password not percent-encoded", state.Conn{URL: "redis://:s3cr/et@127.0.0.1:6379/0"}, "redis-url (unparsable URL: a password in it holding '/'"},
		{"unknown option", state.Conn{URL: "redis://:s3cret@127.0.0.1/0?pool_sise=3"}, "redis-url redis://:xxxxx@127.0.0.1/0?pool_sise=3: redis: unexpected option: pool_sise"},
		{"bad db", state.Conn{URL: "redis://127.0.0.1/zero"}, "redis-url redis://127.0.0.1/zero: redis: invalid database number"},
		{"empty master name", state.Conn{URL: "redis://127.0.0.1:26379/0?master_name="}, "master_name is empty"},
		{"sentinel with an unknown option", state.Conn{URL: "redis://127.0.0.1:26379/0?master_name=dw&password=s3cret&bogus=1"}, "password=xxxxx"},
		{"sentinel over a socket", state.Conn{URL: "unix:///run/redis.sock?master_name=dw"}, "master_name needs redis:// or rediss://"},
		{"CA without TLS", state.Conn{URL: "redis://127.0.0.1/0", CAFile: notPEM}, "redis-ca-file: needs a rediss:// redis-url"},
		{"certificate without TLS", state.Conn{URL: "redis://127.0.0.1/0", CertFile: notPEM, KeyFile: notPEM}, "redis-key-file: needs a rediss:// redis-url"},
		{"certificate without key", state.Conn{URL: "rediss://127.0.0.1/0", CertFile: notPEM}, "redis-cert-file and redis-key-file: set both or neither"},
		{"CA missing", state.Conn{URL: "rediss://127.0.0.1/0", CAFile: missing}, "redis-ca-file: open " + missing},
		{"CA not PEM", state.Conn{URL: "rediss://127.0.0.1/0", CAFile: notPEM}, "redis-ca-file " + notPEM + ": no PEM certificate in it"},
		{"certificate not PEM", state.Conn{URL: "rediss://127.0.0.1/0", CertFile: notPEM, KeyFile: notPEM}, "redis-cert-file, redis-key-file: tls: failed to find any PEM data"},
		{"key encrypted", state.Conn{URL: "rediss://127.0.0.1/0", CertFile: clientCert, KeyFile: encrypted}, "redis-cert-file, redis-key-file: tls: failed to parse private key (the key is encrypted: give it unencrypted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.conn.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				st, err := state.Open(c.conn)
				if err != nil {
					t.Fatalf("Validate passed, Open: %v", err)
				}
				st.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the error shows the password: %v", err)
			}
			if _, oerr := state.Open(c.conn); oerr == nil || oerr.Error() != err.Error() {
				t.Fatalf("Open: %v, want Validate's %v", oerr, err)
			}
		})
	}
}

// TestOpen_TLS connects over TLS to a redis-server that requires a client
// certificate, and shows what each missing piece does.
func TestOpen_TLS(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := state.Conn{URL: srv.URL(), CAFile: srv.TLS.CA, CertFile: srv.TLS.Cert, KeyFile: srv.TLS.Key}
	st, err := state.Open(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.LoadScripts(ctx); err != nil {
		t.Fatalf("load scripts over TLS: %v", err)
	}
	c, err := st.Begin(ctx, state.BeginArgs{User: "alice", Host: "mail-a", Owner: "t", Token: "tok", Destination: "tcp:b:1", TTL: time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatalf("Begin over TLS: %+v, %v", c, err)
	}

	for _, bad := range []struct {
		name  string
		conn  state.Conn
		want  string
		alert bool // the server's refusal, which a reset can stand for
	}{
		{"the system's CAs", state.Conn{URL: srv.URL(), CertFile: srv.TLS.Cert, KeyFile: srv.TLS.Key}, "certificate signed by unknown authority", false},
		{"no client certificate", state.Conn{URL: srv.URL(), CAFile: srv.TLS.CA}, "certificate required", true},
		{"plain", state.Conn{URL: strings.Replace(srv.URL(), "rediss://", "redis://", 1)}, "", false},
	} {
		t.Run(bad.name, func(t *testing.T) {
			st, err := state.Open(bad.conn)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			err = st.Ping(ctx)
			if bad.alert && refusedByServer(err, bad.want) {
				return
			}
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("Ping: %v, want an error with %q", err, bad.want)
			}
		})
	}
}

// TestOpen_SentinelFollowsAFailover finds the primary through a Sentinel,
// records a dsync, fails the primary over to its replica and checks that
// the same Store then works on the new primary with the state it had.
func TestOpen_SentinelFollowsAFailover(t *testing.T) {
	primary := redistest.Start(t)
	replica := redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
	sen := redistest.StartSentinel(t, primary, "dovewarden")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := state.Open(state.Conn{URL: sen.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	c, err := st.Begin(ctx, state.BeginArgs{User: "alice", Host: "mail-a", Owner: "t", Token: "A", Destination: "tcp:b:1", TTL: 5 * time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatalf("Begin through the Sentinel: %+v, %v", c, err)
	}
	if _, _, err := st.Succeed(ctx, state.SuccessArgs{User: "alice", Token: "A", Host: "mail-a", Destination: "tcp:b:1",
		NewState: "state-A", Start: c.Start, TTL: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if n, err := primary.Client(t).Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the replica: %d, %v", n, err)
	}

	after, err := sen.Failover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after != replica.Addr {
		t.Fatalf("new primary %s, want the replica %s", after, replica.Addr)
	}
	// Sentinel turns the old primary into a replica of the new one
	// shortly after the switch. Until then a client that has not heard of
	// the switch yet could still write to it, and the write would be
	// lost: the window every asynchronous Redis failover has
	// (docs/sync.md). The test waits it out; then such a write is refused
	// (READONLY) and retried.
	old := primary.Client(t)
	for deadline := time.Now().Add(20 * time.Second); ; {
		role, err := old.Do(ctx, "ROLE").Slice()
		if err == nil && len(role) > 0 && role[0] == "slave" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old primary is still %v (%v)", role, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var next state.Claim
	deadline := time.Now().Add(20 * time.Second)
	for {
		next, err = st.Begin(ctx, state.BeginArgs{User: "alice", Host: "mail-a", Owner: "t", Token: "B", Destination: "tcp:b:1", TTL: 5 * time.Second})
		if err == nil || time.Now().After(deadline) {
			break
		}
		t.Logf("Begin after the failover (retried): %v", err)
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Begin after the failover: %v", err)
	}
	if next.Decision != state.Run || next.State != "state-A" {
		t.Fatalf("Begin after the failover: %+v, want Run with the dsync state recorded before it", next)
	}
	// And it was written to the new primary.
	if owner, err := replica.Client(t).Get(ctx, state.LockKey("alice")).Result(); err != nil || owner != "B" {
		t.Fatalf("lock on the new primary: %q, %v", owner, err)
	}
}

// TestLogTo: the client library's own log lines (here: a server that is
// not there) reach the structured log.
func TestLogTo(t *testing.T) { logToOnce(t) }

// TestLogTo_EachLoggerHasItsOwnBound: the library's lines are logged 5
// times a minute per format; a logger given with LogTo starts that count
// afresh, so what one test (or an earlier LogTo) used up does not silence
// the next.
func TestLogTo_EachLoggerHasItsOwnBound(t *testing.T) {
	for range 3 {
		logToOnce(t)
	}
}

func logToOnce(t *testing.T) {
	t.Helper()
	// A file: the library may log from its own goroutines.
	logFile, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	state.LogTo(slog.New(slog.NewJSONHandler(logFile, nil)))
	t.Cleanup(func() { state.LogTo(slog.New(slog.NewTextHandler(os.Stderr, nil))) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	st, err := state.Open(state.Conn{URL: "redis://" + addr + "/0?dial_timeout=100ms"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Ping(context.Background()); err == nil {
		t.Fatal("Ping of a closed port answered")
	}
	logged, err := os.ReadFile(logFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	var line struct{ Level, Msg, Detail string }
	first, _, _ := strings.Cut(string(logged), "\n")
	if err := json.Unmarshal([]byte(first), &line); err != nil {
		t.Fatalf("log %q: %v", logged, err)
	}
	if line.Level != "WARN" || line.Msg != "redis client" || !strings.Contains(line.Detail, addr) {
		t.Fatalf("log line %+v, want a warning about %s", line, addr)
	}
}

// TestCheckServer refuses a real Redis Cluster node and a replica (a URL
// that names the old primary after a failover: every write would be
// refused with READONLY, and sync would answer 503 to every event), warns
// about a server that may evict dovewarden's keys, and passes a plain
// server and miniredis (which does not answer INFO with these fields).
func TestCheckServer(t *testing.T) {
	ctx := context.Background()
	cluster := redistest.StartWith(t, redistest.Options{Cluster: true})
	_, err := state.New(cluster.Client(t)).CheckServer(ctx)
	if err == nil || !strings.Contains(err.Error(), "Redis Cluster") {
		t.Errorf("cluster node: %v, want a refusal naming Redis Cluster", err)
	}
	primary := redistest.Start(t)
	pc := primary.Client(t)
	if w, err := state.New(pc).CheckServer(ctx); err != nil || len(w) != 0 {
		t.Errorf("plain server: %q, %v", w, err)
	}
	replica := redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
	_, err = state.New(replica.Client(t)).CheckServer(ctx)
	if err == nil || !strings.Contains(err.Error(), "replica (of "+primary.Addr+")") || !strings.Contains(err.Error(), "master_name") {
		t.Errorf("replica: %v, want a refusal naming the replica's primary and Sentinel", err)
	}
	// Eviction: only a policy other than noeviction with a maxmemory
	// (without one Redis never evicts) is worth a warning.
	for _, c := range []struct {
		maxmemory, policy string
		warn              bool
	}{
		{"100mb", "noeviction", false},
		{"0", "allkeys-lru", false},
		{"100mb", "allkeys-lru", true},
		{"100mb", "volatile-lru", true},
		{"100mb", "volatile-ttl", true},
	} {
		if err := pc.ConfigSet(ctx, "maxmemory", c.maxmemory).Err(); err != nil {
			t.Fatal(err)
		}
		if err := pc.ConfigSet(ctx, "maxmemory-policy", c.policy).Err(); err != nil {
			t.Fatal(err)
		}
		w, err := state.New(pc).CheckServer(ctx)
		if err != nil {
			t.Errorf("maxmemory %s, %s: %v", c.maxmemory, c.policy, err)
		}
		got := len(w) == 1 && strings.Contains(w[0], "maxmemory-policy "+c.policy) && strings.Contains(w[0], "noeviction")
		if got != c.warn || len(w) > 1 {
			t.Errorf("maxmemory %s, %s: warnings %q, want a warning naming the policy and noeviction: %v", c.maxmemory, c.policy, w, c.warn)
		}
		// The same, asked at any time (the metric's reading).
		if evict, ok := state.New(pc).MayEvict(ctx); !ok || evict != c.warn {
			t.Errorf("maxmemory %s, %s: MayEvict %v (ok %v), want %v", c.maxmemory, c.policy, evict, ok, c.warn)
		}
	}
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	if w, err := state.New(rdb).CheckServer(ctx); err != nil || len(w) != 0 {
		t.Errorf("miniredis: %q, %v", w, err)
	}
	if evict, ok := state.New(rdb).MayEvict(ctx); ok || evict {
		t.Errorf("miniredis: MayEvict %v (ok %v), want no answer", evict, ok)
	}
}

// TestTransactions_SayWhyRedisRefused: a pending mark, or a change of the
// excluded users, that a replica (or a full server) refuses reports
// Redis's reason, not the transaction's "EXECABORT Transaction discarded
// because of previous errors", which names none.
func TestTransactions_SayWhyRedisRefused(t *testing.T) {
	ctx := context.Background()
	primary := redistest.Start(t)
	replica := redistest.StartWith(t, redistest.Options{ReplicaOf: primary})
	pc := primary.Client(t)
	calls := map[string]func(*state.Store) error{
		"MarkPending":     func(st *state.Store) error { return st.MarkPending(ctx, "alice", "mail-a", time.Now()) },
		"Exclude":         func(st *state.Store) error { return st.Exclude(ctx, "alice") },
		"ReplaceExcluded": func(st *state.Store) error { return st.ReplaceExcluded(ctx, []string{"alice"}) },
	}
	for name, call := range calls {
		if err := call(state.New(replica.Client(t))); err == nil || !strings.Contains(err.Error(), "READONLY") {
			t.Errorf("%s on a replica: %v, want Redis's READONLY", name, err)
		}
	}
	if err := pc.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	for name, call := range calls {
		if err := call(state.New(pc)); err == nil || !strings.Contains(err.Error(), "OOM") {
			t.Errorf("%s on a full server: %v, want Redis's OOM", name, err)
		}
	}
}

// TestOpen_SaysWhyRedisRefusedTheConnection: a real redis-server past its
// maxclients answers a new connection's first command with an error and
// closes it. The error a caller gets says what Redis said, not only
// go-redis's failed write after it ("broken pipe"); and with a place free
// again the same Store works.
func TestOpen_SaysWhyRedisRefusedTheConnection(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	if err := admin.ConfigSet(ctx, "maxclients", "1").Err(); err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(state.Conn{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	err = st.Ping(ctx)
	if err == nil || !strings.Contains(err.Error(), `Redis refused the connection: "ERR max number of clients reached"`) {
		t.Fatalf("ping past maxclients: %v, want what Redis said", err)
	}
	if err := admin.ConfigSet(ctx, "maxclients", "100").Err(); err != nil {
		t.Fatal(err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Errorf("ping with places free: %v", err)
	}
}
