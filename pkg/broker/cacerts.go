package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
)

// certPool reads a Destination's CACerts: PEM CERTIFICATE blocks and
// nothing else (Knative's webhook checks only the first block). The pool
// holds the system's CAs and these, as Knative appends CACerts to the CAs
// it trusts already.
func certPool(text string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	rest := []byte(text)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM block of type %q, want CERTIFICATE", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("text outside PEM CERTIFICATE blocks")
	}
	return pool, nil
}

// clientFor returns the HTTP client for a destination with caCerts: the
// broker's client, trusting those CAs too. Clients are made while the
// broker is built and shared by destinations with the same CACerts.
func (b *Broker) clientFor(caCerts string) *http.Client {
	if caCerts == "" {
		return b.opts.Client
	}
	if c, ok := b.tlsClients[caCerts]; ok {
		return c
	}
	pool, err := certPool(caCerts)
	if err != nil {
		// Load checked it; a Config built by hand may not have been.
		b.log.Error("CACerts unusable; the system's CAs only", "err", err)
		return b.opts.Client
	}
	base, ok := b.opts.Client.Transport.(*http.Transport)
	if !ok || base == nil {
		base = http.DefaultTransport.(*http.Transport)
	}
	tr := base.Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	c := *b.opts.Client
	c.Transport = tr
	if b.tlsClients == nil {
		b.tlsClients = map[string]*http.Client{}
	}
	b.tlsClients[caCerts] = &c
	return &c
}
