package server

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// testKeyPair loads a new certificate for host, signed by a new CA, and
// returns it with a client configuration that trusts that CA and expects
// host.
func testKeyPair(t *testing.T, host string) (*KeyPair, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(dir, testcert.Leaf{Name: host, Hosts: []string{host}, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := LoadKeyPair(cert, key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return kp, clientOf(t, ca, host)
}

func clientOf(t *testing.T, ca *testcert.CA, host string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, ServerName: host}
}

// serveTLS serves an "ok" handler with kp on a loopback port until the
// test ends, and returns the address.
func serveTLS(t *testing.T, kp *KeyPair) string {
	t.Helper()
	return serveOK(t, Options{KeyPair: kp})
}

// servedSerial makes a request on a new connection (a new handshake) and
// returns the serial number of the certificate it was served, or the
// error.
func servedSerial(addr string, client *tls.Config) (string, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: client, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
		return "", io.ErrUnexpectedEOF
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.String(), nil
}

// leafOf parses the certificate in certFile.
func leafOf(t *testing.T, certFile string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("no PEM in %s", certFile)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKeyPair_ServesARenewedCertificateWithoutARestart: a certificate
// and key replaced on disk (as certbot or a Kubernetes Secret does) are
// served from the next handshake on; a replacement that does not load
// (the key written before its certificate, a file gone) is logged and
// counted once, the failing gauge is 1, and the certificate loaded
// before is still served, until the pair loads; a chmod (the usual fix
// for a key the service may not read) is tried again.
func TestKeyPair_ServesARenewedCertificateWithoutARestart(t *testing.T) {
	dir, issued := t.TempDir(), t.TempDir()
	ca, err := testcert.NewCA(issued)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string) (cert, key string) {
		t.Helper()
		cert, key, err := ca.Issue(issued, testcert.Leaf{Name: name, Hosts: []string{"mail.test"}, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			NotAfter: time.Now().Add(time.Duration(len(name)) * time.Hour).Truncate(time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	live := func(src, dst string) { // replaced, as certbot's renewal and Secrets do
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, dst)); err != nil {
			t.Fatal(err)
		}
	}
	certA, keyA := issue("a")
	live(certA, "tls.crt")
	live(keyA, "tls.key")
	var logs safebuf.Buffer
	kp, err := LoadKeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, kp)
	client := clientOf(t, ca, "mail.test")
	expect := func(step, serial string, notAfter time.Time, failures float64) {
		t.Helper()
		failing := 0.0
		if strings.Contains(step, "half") || strings.Contains(step, "gone") {
			failing = 1
		}
		defer func() {
			if got := testutil.ToFloat64(kp.failing); got != failing {
				t.Errorf("%s: reload failing %v, want %v", step, got, failing)
			}
		}()
		got, err := servedSerial(addr, client)
		if err != nil || got != serial {
			t.Fatalf("%s: served serial %s, %v; want %s\n%s", step, got, err, serial, &logs)
		}
		if got := testutil.ToFloat64(kp.expires); got != float64(notAfter.Unix()) {
			t.Errorf("%s: expiry gauge %v, want %v", step, got, notAfter.Unix())
		}
		if got := testutil.ToFloat64(kp.failed); got != failures {
			t.Errorf("%s: reload failures %v, want %v", step, got, failures)
		}
	}
	expect("at start", leafOf(t, certA).SerialNumber.String(), leafOf(t, certA).NotAfter, 0)

	certB, keyB := issue("bb")
	live(keyB, "tls.key")
	live(certB, "tls.crt")
	expect("renewed", leafOf(t, certB).SerialNumber.String(), leafOf(t, certB).NotAfter, 0)

	// A renewal caught half way: the new key, the old certificate.
	certC, keyC := issue("ccc")
	live(keyC, "tls.key")
	expect("half renewed", leafOf(t, certB).SerialNumber.String(), leafOf(t, certB).NotAfter, 1)
	expect("half renewed, again", leafOf(t, certB).SerialNumber.String(), leafOf(t, certB).NotAfter, 1)
	if !strings.Contains(logs.String(), "did not load") || !strings.Contains(logs.String(), "tls-cert-file") {
		t.Errorf("the failed load is not logged with the setting:\n%s", &logs)
	}
	// Not readable, say, and fixed with a chmod: only the ctime changes.
	if err := os.Chmod(filepath.Join(dir, "tls.key"), 0o640); err != nil {
		t.Fatal(err)
	}
	expect("half renewed, after a chmod", leafOf(t, certB).SerialNumber.String(), leafOf(t, certB).NotAfter, 2)
	live(certC, "tls.crt")
	expect("renewal finished", leafOf(t, certC).SerialNumber.String(), leafOf(t, certC).NotAfter, 2)

	// A link to nothing, as a renewal that went wrong leaves.
	if err := os.Remove(filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "nothing"), filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	expect("key gone", leafOf(t, certC).SerialNumber.String(), leafOf(t, certC).NotAfter, 3)
	expect("key gone, again", leafOf(t, certC).SerialNumber.String(), leafOf(t, certC).NotAfter, 3)
	if !strings.Contains(logs.String(), "no such file") {
		t.Errorf("the missing key is not logged:\n%s", &logs)
	}
	live(keyC, "tls.key")
	expect("key back", leafOf(t, certC).SerialNumber.String(), leafOf(t, certC).NotAfter, 3)
}

// TestOptions_TLSSettings: both files or neither, and a file that does
// not load is named at start.
func TestOptions_TLSSettings(t *testing.T) {
	o := Options{Listen: ":8080", LogFormat: "text", LogLevel: "info", ShutdownTimeout: time.Second, TLSCertFile: "x.crt"}
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "tls-cert-file and tls-key-file") {
		t.Errorf("a certificate without a key: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "none.key")
	kp, _ := testKeyPair(t, "mail.test")
	o.TLSCertFile, o.TLSKeyFile = kp.certFile, missing
	if err := o.LoadTLS(slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry()); err == nil || !strings.Contains(err.Error(), "tls-key-file") {
		t.Errorf("a missing key file: %v, want an error naming tls-key-file", err)
	}
	o.TLSCertFile, o.TLSKeyFile = kp.keyFile, kp.keyFile
	if err := o.LoadTLS(slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry()); err == nil || !strings.Contains(err.Error(), "tls-cert-file") {
		t.Errorf("a key as the certificate: %v, want an error naming tls-cert-file", err)
	}
}

// TestKeyPair_SaysWhenTheCertificateHasExpired: an expired certificate is
// still served (a renewal may be on its way), but the log says so at
// once, and the expiry gauge, which the alert reads, is in the past.
func TestKeyPair_SaysWhenTheCertificateHasExpired(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	expired := time.Now().Add(-time.Minute).Truncate(time.Second)
	cert, key, err := ca.Issue(dir, testcert.Leaf{Name: "old", Hosts: []string{"mail.test"}, NotAfter: expired})
	if err != nil {
		t.Fatal(err)
	}
	var logs safebuf.Buffer
	kp, err := LoadKeyPair(cert, key, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("an expired certificate: %v, want it loaded", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "has expired") || !strings.Contains(logs.String(), cert) {
		t.Errorf("log %q, want an error naming the file", &logs)
	}
	if got := testutil.ToFloat64(kp.expires); got != float64(expired.Unix()) {
		t.Errorf("expiry gauge %v, want %v", got, expired.Unix())
	}
}

// TestKeyPair_RefusesAFileTooLargeForAPair: a tls-cert-file or
// tls-key-file over config.MaxPEMFile (the wrong file named: a log, a
// device that never ends) is not read whole. At start it stops the
// start with an error naming the setting; at a reload the pair loaded
// before is still served, and the refusal is logged and counted. The
// oversized files here hold a pair that loads, padded after it, so that
// only the bound refuses them.
func TestKeyPair_RefusesAFileTooLargeForAPair(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(dir, testcert.Leaf{Name: "a", Hosts: []string{"mail.test"}, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
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
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct{ setting, cert, key string }{
		{"tls-cert-file", padded(cert), key},
		{"tls-key-file", cert, padded(key)},
	} {
		_, err := LoadKeyPair(c.cert, c.key, discard)
		if err == nil || !strings.HasPrefix(err.Error(), c.setting+": ") || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("%s too large at start: %v, want an error naming %s", c.setting, err, c.setting)
		}
	}

	var logs safebuf.Buffer
	kp, err := LoadKeyPair(cert, key, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, kp)
	client := clientOf(t, ca, "mail.test")
	want := leafOf(t, cert).SerialNumber.String()
	// A renewal that writes a new pair padded past the bound.
	cert2, key2, err := ca.Issue(t.TempDir(), testcert.Leaf{Name: "b", Hosts: []string{"mail.test"}, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(padded(cert2), cert); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(key2, key); err != nil {
		t.Fatal(err)
	}
	got, err := servedSerial(addr, client)
	if err != nil || got != want {
		t.Fatalf("after an oversized renewal: served %s, %v; want the pair loaded before, %s\n%s", got, err, want, &logs)
	}
	if testutil.ToFloat64(kp.failing) != 1 || testutil.ToFloat64(kp.failed) != 1 {
		t.Errorf("reload failing %v, failures %v; want 1, 1", testutil.ToFloat64(kp.failing), testutil.ToFloat64(kp.failed))
	}
	if !strings.Contains(logs.String(), "did not load") || !strings.Contains(logs.String(), "tls-cert-file: ") || !strings.Contains(logs.String(), "larger than") {
		t.Errorf("the refused reload is not logged with the setting:\n%s", &logs)
	}
}
