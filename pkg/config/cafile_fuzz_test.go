package config

import (
	"crypto/x509"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/testcert"
)

// FuzzParseCAs holds parseCAs to what Go's own x509.CertPool.AppendCertsFromPEM
// makes of the same bytes, except where it refuses a file cut short that
// AppendCertsFromPEM reads up to the cut: a pool only when it finds a
// certificate, and then the same pool.
func FuzzParseCAs(f *testing.F) {
	dir := f.TempDir()
	a, err := testcert.NewCA(dir)
	if err != nil {
		f.Fatal(err)
	}
	b, err := testcert.NewCA(dir)
	if err != nil {
		f.Fatal(err)
	}
	two := append(append([]byte{}, a.PEM()...), b.PEM()...)
	f.Add(a.PEM())
	f.Add(two)
	f.Add(two[:len(two)-40])                                  // cut inside the second
	f.Add(append(append([]byte{}, a.PEM()...), "-----BE"...)) // cut in a BEGIN line
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("# a bundle's comment\n" + string(a.PEM())))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		pool, n, err := parseCAs("doveadm-ca-file", "/ca.pem", data)
		ref := x509.NewCertPool()
		found := ref.AppendCertsFromPEM(data)
		switch {
		case err != nil:
			if !strings.HasPrefix(err.Error(), "doveadm-ca-file /ca.pem: ") {
				t.Fatalf("error does not name the setting and file: %v", err)
			}
			if found && !strings.Contains(err.Error(), "cut short") {
				t.Fatalf("refused (%v), but AppendCertsFromPEM finds a certificate", err)
			}
		case !found:
			t.Fatalf("%d certificates, but AppendCertsFromPEM finds none", n)
		case n < 1 || pool == nil:
			t.Fatalf("no error, but %d certificates and pool %v", n, pool)
		case !pool.Equal(ref):
			t.Fatal("the pool differs from AppendCertsFromPEM's")
		}
	})
}
