package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/testcert"
)

// suiteCA signs the certificates dovewarden's listeners and Dovecot's
// doveadm listeners serve in a system with config.tls. Dovecot's
// exporters and dsync trust it through ssl_client_ca_file (dovecottest's
// ClientCAFile), dovewarden's sync through --doveadm-ca-file, the suite's
// own requests through httpClient.
var suiteCA *testcert.CA

// httpClient is the client of every request the suite makes to
// dovewarden: it trusts suiteCA as well as the system's CAs.
var httpClient = http.DefaultClient

// makeSuiteCA makes suiteCA and httpClient in a new folder, and returns
// the folder to remove at the end.
func makeSuiteCA() (string, error) {
	dir, err := os.MkdirTemp("", "dovewarden-e2e-ca-")
	if err != nil {
		return "", err
	}
	if suiteCA, err = testcert.NewCA(dir); err != nil {
		return dir, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	pem, err := os.ReadFile(suiteCA.File)
	if err != nil {
		return dir, err
	}
	pool.AppendCertsFromPEM(pem)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	httpClient = &http.Client{Transport: tr}
	return dir, nil
}

// listenerCert issues, into dir, the certificate of a dovewarden listener
// on 127.0.0.1, signed by suiteCA, and returns the files' settings.
func listenerCert(t testing.TB, dir string) []string {
	t.Helper()
	cert, key, err := suiteCA.Issue(dir, testcert.Leaf{Name: "listener", Hosts: []string{"127.0.0.1"},
		Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--tls-cert-file", cert, "--tls-key-file", key}
}

// doveadmCert issues, into dir, the certificate of the doveadm listeners
// of the Dovecot server name on 127.0.0.1, signed by suiteCA, and returns
// its files.
func doveadmCert(t testing.TB, dir, name string) (cert, key string) {
	t.Helper()
	cert, key, err := suiteCA.Issue(dir, testcert.Leaf{Name: "doveadm-" + name, Hosts: []string{"127.0.0.1"},
		Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}
