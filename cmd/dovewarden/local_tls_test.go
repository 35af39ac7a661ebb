package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/testcert"
)

// TestLocal_TLS: with --tls-cert-file and --tls-key-file, local serves
// HTTPS only: Dovecot's events arrive over it, the sync handler's own
// post to the broker ingress (the replication.failed of an attempt it
// retries) reaches an alert webhook although the certificate does not
// name the loopback address it is posted to, and replicate and status
// reach the process with the CA in --tls-ca-file, not without.
func TestLocal_TLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	// localhost, not 127.0.0.1: the process posts to itself by address.
	cert, key, err := ca.Issue(dir, testcert.Leaf{Name: "mail", Hosts: []string{"mail.test", "localhost"},
		Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	l := startRetriedLocal(t, map[string]string{"DOVEWARDEN_TLS_CERT_FILE": cert, "DOVEWARDEN_TLS_KEY_FILE": key})
	base, stop, tr, stderr := l.base, l.stop, l.tr, l.stderr
	port := base[strings.LastIndex(base, ":")+1:]

	pem, err := os.ReadFile(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	// As Dovecot's exporter with ssl_client_ca_file, to the name in the
	// certificate.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "mail.test"}}}
	resp, err := client.Post("https://127.0.0.1:"+port+"/events", "application/json", strings.NewReader(deliveryEvent))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /events over TLS: HTTP %d\n%s", resp.StatusCode, stderr)
	}
	if resp, err := http.Post("http://127.0.0.1:"+port+"/events", "application/json", strings.NewReader(deliveryEvent)); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain HTTP to the TLS listener: HTTP %d, want 400", resp.StatusCode)
	}

	l.awaitRetriedAlert(t)
	deadline := time.Now().Add(10 * time.Second)

	named := "https://localhost:" + port
	cli, out, cliErr := testEnv(nil, "")
	if err := run(context.Background(), cli, []string{"replicate", "--broker-url", named + "/local/dovewarden", "carol"}); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Errorf("replicate without the CA: %v, want a certificate error", err)
	}
	if err := run(context.Background(), cli, []string{"replicate", "--broker-url", named + "/local/dovewarden", "--tls-ca-file", ca.File, "carol"}); err != nil {
		t.Fatalf("replicate with the CA: %v\n%s", err, cliErr)
	}
	for len(tr.CallsOf("carol")) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if len(tr.CallsOf("carol")) == 0 {
		t.Errorf("no dsync of carol after replicate\n%s", stderr)
	}
	if err := run(context.Background(), cli, []string{"status", "--url", named, "u1"}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("status without the CA: %v, want a certificate error", err)
	}
	if err := run(context.Background(), cli, []string{"status", "--url", named, "--tls-ca-file", ca.File, "u1"}); err != nil {
		t.Fatalf("status with the CA: %v\n%s", err, cliErr)
	}
	if !strings.Contains(out.String(), "last success") || strings.Contains(out.String(), "no record") {
		t.Errorf("status of u1:\n%s", out)
	}
	if err := run(context.Background(), cli, []string{"status", "--url", "http://localhost:" + port, "--tls-ca-file", ca.File}); err == nil ||
		!strings.Contains(err.Error(), "tls-ca-file: needs an https:// url") {
		t.Errorf("status with a CA and a plain URL: %v, want the settings named", err)
	}
	if err := stop(); err != nil {
		t.Errorf("local returned %v\n%s", err, stderr)
	}
}
