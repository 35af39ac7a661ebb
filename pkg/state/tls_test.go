package state_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// logTo sends what the Store logs about its TLS files to the returned
// buffer until the test ends.
func logTo(t *testing.T) *safebuf.Buffer {
	var logged safebuf.Buffer
	state.LogTo(slog.New(slog.NewTextHandler(&logged, nil)))
	t.Cleanup(func() { state.LogTo(slog.New(slog.NewTextHandler(os.Stderr, nil))) })
	return &logged
}

// TestOpen_ClientCertificateRenewedWithoutARestart: a client certificate
// renewed on disk (redis-cert-file, redis-key-file) is used from the next
// connection to Redis on, so that sync goes on once the old one expires.
// A pair that does not load then (half written) is logged, and the pair
// loaded before is still used.
func TestOpen_ClientCertificateRenewedWithoutARestart(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	logged := logTo(t)

	dir := t.TempDir()
	// An expired one: redis-server refuses it.
	cert, key, err := srv.TLS.IssueClient(dir, "client", time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(state.Conn{URL: srv.URL() + "?dial_timeout=2s&max_retries=1", CAFile: srv.TLS.CA, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := st.Ping(ctx); err == nil {
		t.Fatal("Ping with an expired client certificate answered")
	}
	if !strings.Contains(logged.String(), "redis-cert-file") || !strings.Contains(logged.String(), "expired") {
		t.Errorf("log %q, want an error that redis-cert-file has expired", logged.String())
	}

	// The renewal, written over the same files.
	if _, _, err := srv.TLS.IssueClient(dir, "client", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Fatalf("Ping after the client certificate was renewed: %v", err)
	}

	// Half written: the pair loaded before is still used, and the
	// failure logged once.
	if err := os.WriteFile(cert, []byte("-----BEGIN CERTIFICATE-----\nMIIB"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := srv.Client(t).ClientKillByFilter(ctx, "TYPE", "normal").Err(); err != nil {
			t.Fatal(err)
		}
		if err := st.Ping(ctx); err != nil {
			t.Fatalf("Ping %d with a half-written redis-cert-file: %v", i, err)
		}
	}
	if n := strings.Count(logged.String(), "did not load"); n != 1 {
		t.Errorf("a failed load logged %d times, want once:\n%s", n, logged.String())
	}
	if strings.Contains(logged.String(), "PRIVATE KEY") || strings.Contains(logged.String(), "MIIB") {
		t.Errorf("the log shows the files' contents:\n%s", logged.String())
	}
	if want := filepath.Base(cert); !strings.Contains(logged.String(), want) {
		t.Errorf("log %q does not name %s", logged.String(), want)
	}
}

// TestOpen_CAFileReadAgain: redis-ca-file is read again at each new
// connection, so that a CA added to it (a rotation, before Redis's
// certificate is reissued by the new CA) is trusted without a restart.
func TestOpen_CAFileReadAgain(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	logged := logTo(t)

	dir := t.TempDir()
	other, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	otherPEM := other.PEM()
	caFile := filepath.Join(dir, "redis-ca.pem")
	if err := os.WriteFile(caFile, otherPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(state.Conn{URL: srv.URL() + "?dial_timeout=2s&max_retries=1", CAFile: caFile, CertFile: srv.TLS.Cert, KeyFile: srv.TLS.Key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := st.Ping(ctx); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("Ping with a CA that did not sign Redis's certificate: %v, want unknown authority", err)
	}

	redisCA, err := os.ReadFile(srv.TLS.CA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, append(otherPEM, redisCA...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Fatalf("Ping after Redis's CA was added to redis-ca-file: %v", err)
	}
	if !strings.Contains(logged.String(), "redis-ca-file loaded again") || !strings.Contains(logged.String(), "certificates=2") {
		t.Errorf("log %q, want redis-ca-file loaded again with 2 certificates", logged.String())
	}

	// Gone: the CAs loaded before still verify a new connection.
	if err := os.Remove(caFile); err != nil {
		t.Fatal(err)
	}
	if err := srv.Client(t).ClientKillByFilter(ctx, "TYPE", "normal").Err(); err != nil {
		t.Fatal(err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Fatalf("Ping on a new connection with redis-ca-file gone: %v", err)
	}
	if !strings.Contains(logged.String(), "redis-ca-file did not load") {
		t.Errorf("log %q, want redis-ca-file did not load", logged.String())
	}
}

// TestOpen_CARotation: a private CA replaced, as docs/operations.md
// describes it, with a real redis-server: the new CA added to
// redis-ca-file and to Redis's tls-ca-cert-file, Redis's certificate and
// the client certificate reissued by it, the old CA taken out of both;
// the same Store reaches Redis at each step, without a restart. Redis
// loads a file again at CONFIG SET of the same path.
func TestOpen_CARotation(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	logTo(t)
	dir := t.TempDir()
	newCA, err := testcert.NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	oldPEM, err := os.ReadFile(srv.TLS.CA)
	if err != nil {
		t.Fatal(err)
	}
	both := append(append([]byte{}, oldPEM...), newCA.PEM()...)
	write := func(path string, b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// dovewarden's files: redis-ca-file, and the client certificate.
	caFile, certFile, keyFile := filepath.Join(dir, "redis-ca.pem"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	write(caFile, oldPEM)
	for src, dst := range map[string]string{srv.TLS.Cert: certFile, srv.TLS.Key: keyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		write(dst, b)
	}
	st, err := state.Open(state.Conn{URL: srv.URL() + "?dial_timeout=2s&max_retries=1", CAFile: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// The administrator's client trusts both CAs, and presents a
	// certificate of the old one.
	adminTLS, err := srv.TLS.Config()
	if err != nil {
		t.Fatal(err)
	}
	adminTLS.RootCAs.AppendCertsFromPEM(newCA.PEM())
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr, TLSConfig: adminTLS, PoolSize: 1})
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	step := func(name string) {
		t.Helper()
		// A new connection, as after a restart of Redis or a dropped one.
		if err := admin.ClientKillByFilter(ctx, "TYPE", "normal").Err(); err != nil {
			t.Fatal(err)
		}
		if err := st.Ping(ctx); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	step("the old CA")

	// 1. The new CA trusted beside the old one, by both sides.
	redisTrust := filepath.Join(dir, "redis-trust.pem")
	write(redisTrust, both)
	if err := admin.ConfigSet(ctx, "tls-ca-cert-file", redisTrust).Err(); err != nil {
		t.Fatal(err)
	}
	write(caFile, both)
	step("both CAs trusted")

	// 2. Every certificate reissued by the new CA.
	cert, key, err := newCA.Issue(dir, testcert.Leaf{Name: "server-new", Hosts: []string{"127.0.0.1"},
		Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	// Both at once: each alone would not match the other.
	if err := admin.Do(ctx, "CONFIG", "SET", "tls-cert-file", cert, "tls-key-file", key).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := newCA.Issue(dir, testcert.Leaf{Name: "client", Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	step("the certificates reissued by the new CA")

	// 3. The old CA taken out, by both sides: Redis's file written over,
	// and loaded again by CONFIG SET of the same path.
	write(caFile, newCA.PEM())
	write(redisTrust, newCA.PEM())
	if err := admin.ConfigSet(ctx, "tls-ca-cert-file", redisTrust).Err(); err != nil {
		t.Fatal(err)
	}
	step("the old CA taken out")
	// The administrator's certificate, of the old CA, is refused now.
	stale := redis.NewClient(&redis.Options{Addr: srv.Addr, TLSConfig: adminTLS, MaxRetries: -1})
	defer stale.Close()
	if err := stale.Ping(ctx).Err(); !refused(err, "unknown certificate authority", "") {
		t.Errorf("a client certificate of the old CA: %v; want it refused (CONFIG SET of the same path loads the file again)", err)
	}
	if failing := st.TLSFilesFailing(); failing["redis-ca-file"] || failing["redis-cert-file"] {
		t.Errorf("files reported failing: %v", failing)
	}
}

// TestOpen_TwoStoresLogAChangeOnce: sync (and local mode) open more than
// one Store on the same files; a change of a file, or its failure to
// load, is logged once in the process, not once by each.
func TestOpen_TwoStoresLogAChangeOnce(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	logged := logTo(t)
	dir := t.TempDir()
	caPEM, err := os.ReadFile(srv.TLS.CA)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "redis-ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, key, err := srv.TLS.IssueClient(dir, "client", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	conn := state.Conn{URL: srv.URL() + "?dial_timeout=2s&max_retries=1", CAFile: caFile, CertFile: cert, KeyFile: key}
	var stores []*state.Store
	for range 2 {
		st, err := state.Open(conn)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		stores = append(stores, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pingAll := func(step string) {
		t.Helper()
		if err := srv.Client(t).ClientKillByFilter(ctx, "TYPE", "normal").Err(); err != nil {
			t.Fatal(err)
		}
		for i, st := range stores {
			if err := st.Ping(ctx); err != nil {
				t.Fatalf("%s: Store %d: %v", step, i, err)
			}
			st.TLSFilesFailing() // as a scrape reads them
		}
	}
	pingAll("at first")
	other, err := testcert.NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, append(append([]byte{}, caPEM...), other.PEM()...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := srv.TLS.IssueClient(dir, "client", time.Time{}); err != nil {
		t.Fatal(err)
	}
	pingAll("both files changed")
	if err := os.WriteFile(cert, []byte("-----BEGIN CERTIFICATE-----\nMIIB"), 0o600); err != nil {
		t.Fatal(err)
	}
	pingAll("the certificate half written")
	for _, want := range []string{"redis-ca-file loaded again", "Redis client certificate loaded again", "redis-cert-file and redis-key-file did not load"} {
		if n := strings.Count(logged.String(), want); n != 1 {
			t.Errorf("%q logged %d times by two Stores, want once:\n%s", want, n, logged.String())
		}
	}
}

// TestOpen_RedissToAPlainPortSaysSo: redis-server's plain port takes a
// TLS hello for the start of a command line and waits for its end; the
// error says so, not "context deadline exceeded" alone, also when the
// caller's deadline comes first.
func TestOpen_RedissToAPlainPortSaysSo(t *testing.T) {
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name   string
		query  string
		within time.Duration
	}{
		{"the dial timeout first", "?dial_timeout=300ms&max_retries=0", 5 * time.Second},
		{"the caller's deadline first", "?max_retries=0", 500 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, err := state.Open(state.Conn{URL: strings.Replace(srv.URL(), "redis://", "rediss://", 1) + tt.query})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			ctx, cancel := context.WithTimeout(context.Background(), tt.within)
			defer cancel()
			err = st.Ping(ctx)
			if err == nil || !strings.Contains(err.Error(), "tls-port") {
				t.Fatalf("Ping: %v, want an error that names the TLS port", err)
			}
		})
	}
}

// TestStore_ClientCertificateExpiryFollowsTheFile: the expiry the metric
// shows is that of the certificate a new connection would present:
// redis-cert-file as it is now, without waiting for a connection, or the
// pair loaded before while the files do not load; and none without a
// client certificate.
func TestStore_ClientCertificateExpiryFollowsTheFile(t *testing.T) {
	logTo(t)
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(notAfter time.Time) (string, string) {
		t.Helper()
		cert, key, err := ca.Issue(dir, testcert.Leaf{Name: "client", Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotAfter: notAfter})
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	first := time.Now().Add(3 * 24 * time.Hour).Truncate(time.Second)
	cert, key := issue(first)
	// Nothing listens there: the expiry is read without Redis.
	st, err := state.Open(state.Conn{URL: "rediss://127.0.0.1:1", CAFile: ca.File, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	expect := func(step string, want time.Time) {
		t.Helper()
		got, ok := st.ClientCertificateExpiry()
		if !ok || !got.Equal(want) {
			t.Errorf("%s: expiry %v, %v; want %v", step, got, ok, want)
		}
	}
	failing := func(st *state.Store, step string, want map[string]bool) {
		t.Helper()
		if got := st.TLSFilesFailing(); !maps.Equal(got, want) {
			t.Errorf("%s: files failing %v, want %v", step, got, want)
		}
	}
	expect("at start", first)
	failing(st, "at start", map[string]bool{"redis-cert-file": false, "redis-ca-file": false})
	renewed := first.Add(60 * 24 * time.Hour)
	issue(renewed)
	expect("renewed", renewed)
	failing(st, "renewed", map[string]bool{"redis-cert-file": false, "redis-ca-file": false})
	if err := os.WriteFile(cert, []byte("-----BEGIN CERTIFICATE-----\nMIIB"), 0o600); err != nil {
		t.Fatal(err)
	}
	expect("half written", renewed)
	failing(st, "the certificate half written", map[string]bool{"redis-cert-file": true, "redis-ca-file": false})
	caPEM := ca.PEM()
	if err := os.WriteFile(ca.File, caPEM[:len(caPEM)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	failing(st, "the CA file half written too", map[string]bool{"redis-cert-file": true, "redis-ca-file": true})
	issue(renewed.Add(time.Hour))
	if err := os.WriteFile(ca.File, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	failing(st, "both written again", map[string]bool{"redis-cert-file": false, "redis-ca-file": false})

	plain, err := state.Open(state.Conn{URL: "rediss://127.0.0.1:1", CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if got, ok := plain.ClientCertificateExpiry(); ok {
		t.Errorf("without a client certificate: expiry %v, want none", got)
	}
	failing(plain, "without a client certificate", map[string]bool{"redis-ca-file": false})
	system, err := state.Open(state.Conn{URL: "rediss://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer system.Close()
	failing(system, "the system's CAs, no client certificate", map[string]bool{})
}

// refusedByServer tells whether err, a Store's, is the server refusing
// the client's certificate: its TLS alert (alert names it), or the reset
// that can come instead. With TLS 1.3 the client's handshake ends before
// the server has checked its certificate; the alert then follows the
// client's first command, and a server that closes with that command
// unread resets the connection, which discards the alert unread; the
// Store's error then says what that most likely was.
func refusedByServer(err error, alert string) bool {
	return refused(err, alert, "Redis reset the connection before its first answer")
}

// refused is refusedByServer for any client: a reset counts as the
// refusal when its error says hint ("" for a plain go-redis client, which
// says nothing more).
func refused(err error, alert, hint string) bool {
	if err == nil {
		return false
	}
	reset := errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	return strings.Contains(err.Error(), alert) || reset && strings.Contains(err.Error(), hint)
}

// TestOpen_AResetRightAfterTheHandshakeSaysWhy: with TLS 1.3, a Redis that
// refuses the client's certificate (or its lack of one) does so after the
// client's side of the handshake has ended, and its alert is lost when it
// resets the connection with the first command unread. The error then
// says what most likely happened, not only "connection reset by peer".
// Here a TLS server that resets every connection once its handshake ends
// stands in for that Redis, which does it only some of the time.
func TestOpen_AResetRightAfterTheHandshakeSaysWhy(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	scert, skey, err := ca.Issue(dir, testcert.Leaf{Name: "server", Hosts: []string{"127.0.0.1"}, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	ccert, ckey, err := ca.Issue(dir, testcert.Leaf{Name: "client", Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(scert, skey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequestClientCert})
	if err != nil {
		t.Fatal(err)
	}
	serveEach(t, ln, func(c net.Conn) {
		tc := c.(*tls.Conn)
		if tc.Handshake() == nil {
			_ = tc.NetConn().(*net.TCPConn).SetLinger(0) // close with a reset
		}
		tc.NetConn().Close()
	})
	for _, tt := range []struct {
		name      string
		cert, key string
		want      string
	}{
		{"with a client certificate", ccert, ckey, "refused the client certificate"},
		{"without one", "", "", "requires a client certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, err := state.Open(state.Conn{URL: "rediss://" + ln.Addr().String() + "/0?max_retries=0&dial_timeout=2s",
				CAFile: ca.File, CertFile: tt.cert, KeyFile: tt.key})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = st.Ping(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Ping: %v; want an error that says Redis most likely %s", err, tt.want)
			}
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Errorf("Ping: %v; want the reset kept as the cause", err)
			}
			t.Logf("Ping: %v", err)
		})
	}
}

// TestOpen_ClientPairFileTooLarge: a redis-cert-file or redis-key-file
// over config.MaxPEMFile (the wrong file named: a log, a device that
// never ends) is not read whole. At start it stops the start with an
// error naming the setting; read again at a new connection, the pair
// loaded before is still used, and the refusal is logged. The oversized
// files hold a pair that loads, padded after it, so that only the bound
// refuses them.
func TestOpen_ClientPairFileTooLarge(t *testing.T) {
	logged := logTo(t)
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	first := time.Now().Add(3 * 24 * time.Hour).Truncate(time.Second)
	cert, key, err := ca.Issue(dir, testcert.Leaf{Name: "client", Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotAfter: first})
	if err != nil {
		t.Fatal(err)
	}
	padded := func(src string) string {
		t.Helper()
		dst, err := testcert.Padded(t.TempDir(), src, config.MaxPEMFile)
		if err != nil {
			t.Fatal(err)
		}
		return dst
	}
	// Nothing listens there: the files are read without Redis.
	for _, c := range []struct{ setting, cert, key string }{
		{"redis-cert-file", padded(cert), key},
		{"redis-key-file", cert, padded(key)},
	} {
		_, err := state.Open(state.Conn{URL: "rediss://127.0.0.1:1", CAFile: ca.File, CertFile: c.cert, KeyFile: c.key})
		if err == nil || !strings.HasPrefix(err.Error(), c.setting+": ") || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("%s too large at start: %v, want an error naming %s", c.setting, err, c.setting)
		}
	}

	st, err := state.Open(state.Conn{URL: "rediss://127.0.0.1:1", CAFile: ca.File, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	renewedDir := t.TempDir()
	cert2, key2, err := ca.Issue(renewedDir, testcert.Leaf{Name: "client", Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotAfter: first.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(padded(cert2), cert); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(key2, key); err != nil {
		t.Fatal(err)
	}
	if got, ok := st.ClientCertificateExpiry(); !ok || !got.Equal(first) {
		t.Errorf("after an oversized renewal: expiry %v, %v; want the pair loaded before's, %v", got, ok, first)
	}
	if got := st.TLSFilesFailing(); !got["redis-cert-file"] {
		t.Errorf("files failing %v, want redis-cert-file", got)
	}
	if !strings.Contains(logged.String(), "did not load") || !strings.Contains(logged.String(), "redis-cert-file: ") || !strings.Contains(logged.String(), "larger than") {
		t.Errorf("the refused read is not logged with the setting:\n%s", logged.String())
	}
}
