package redistest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/testcert"
)

// TLSFiles are what a client of a TLS server needs: the CA that signed
// the server's certificate, and a client certificate and key (the server
// requires one, as redis-server does by default with tls-auth-clients).
type TLSFiles struct {
	CA, Cert, Key string
	// server's certificate and key, signed by CA.
	serverCert, serverKey string
	ca                    *testcert.CA
}

// IssueClient writes another client certificate the server accepts
// (signed by CA), valid until notAfter (a day from now when zero), and
// its key, to dir/name.crt and dir/name.key: a renewal, or one expired.
func (f *TLSFiles) IssueClient(dir, name string, notAfter time.Time) (cert, key string, err error) {
	return f.ca.Issue(dir, testcert.Leaf{Name: name, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotAfter: notAfter})
}

// serverArgs are redis-server's (and a Sentinel's) arguments to listen on
// port with TLS only, requiring client certificates. Its certificate is
// also its client certificate towards a primary.
func (f *TLSFiles) serverArgs(port int) []string {
	return []string{"--port", "0", "--tls-port", strconv.Itoa(port), "--tls-cert-file", f.serverCert,
		"--tls-key-file", f.serverKey, "--tls-ca-cert-file", f.CA, "--tls-auth-clients", "yes"}
}

// Config is the client TLS configuration the files describe.
func (f *TLSFiles) Config() (*tls.Config, error) {
	ca, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no certificate in %s", f.CA)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, nil
}

// newTLSFiles writes a new CA, a server certificate for 127.0.0.1 and
// localhost, and a client certificate, each with its key, into dir.
func newTLSFiles(dir string) (*TLSFiles, error) {
	ca, err := testcert.NewCA(dir)
	if err != nil {
		return nil, err
	}
	f := &TLSFiles{CA: ca.File, ca: ca}
	// The servers' certificate serves replicas and Sentinels as their
	// client certificate too.
	if f.serverCert, f.serverKey, err = ca.Issue(dir, testcert.Leaf{Name: "server", Hosts: []string{"127.0.0.1", "::1", "localhost"},
		Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, err
	}
	if f.Cert, f.Key, err = ca.Issue(dir, testcert.Leaf{Name: "client", Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, err
	}
	return f, nil
}
