package broker

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// certPool reads a Destination's CACerts (config.PEMCAs): the system's
// CAs and these, as Knative appends CACerts to the CAs it trusts already.
func certPool(text string) (*x509.CertPool, error) { return config.PEMCAs(text) }

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
