// Package testcert makes a private CA and the certificates it signs, as
// PEM files, for tests of TLS servers and clients (redis-server, the
// dovewarden listener, Dovecot's event exporter).
package testcert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA signs certificates. File is its certificate, PEM.
type CA struct {
	File string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA writes a new CA certificate, valid for a day, to dir/ca.crt.
func NewCA(dir string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{File: filepath.Join(dir, "ca.crt"), cert: cert, key: key}
	return ca, WritePEM(ca.File, "CERTIFICATE", der)
}

// Certificate is the CA's certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// PEM is the CA's certificate, PEM, as in File.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// Leaf describes a certificate to issue.
type Leaf struct {
	// Name is the subject's common name and the files' base name:
	// dir/Name.crt and dir/Name.key.
	Name string
	// Hosts are the names (DNS names, or IP addresses) it is valid for.
	Hosts []string
	// Usage: server or client authentication, or both.
	Usage []x509.ExtKeyUsage
	// NotAfter defaults to a day from now.
	NotAfter time.Time
}

// Issue writes a new key and the certificate l describes, signed by ca,
// into dir, and returns their paths.
func (ca *CA) Issue(dir string, l Leaf) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	if l.NotAfter.IsZero() {
		l.NotAfter = now.Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: l.Name},
		NotBefore: now.Add(-time.Hour), NotAfter: l.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: l.Usage,
	}
	for _, h := range l.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, l.Name+".crt"), filepath.Join(dir, l.Name+".key")
	if err := WritePEM(certFile, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return certFile, keyFile, WritePEM(keyFile, "PRIVATE KEY", keyDER)
}

// WritePEM writes one PEM block to path, readable by its owner only.
func WritePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// serial is a random serial number, so that reissued certificates differ.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// Padded copies the PEM file src into dir with n newlines after its
// blocks: a file that still loads, larger than a bound on its size.
func Padded(dir, src string, n int) (string, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	b = append(b, bytes.Repeat([]byte{'\n'}, n)...)
	dst := filepath.Join(dir, "padded-"+filepath.Base(src))
	return dst, os.WriteFile(dst, b, 0o600)
}
