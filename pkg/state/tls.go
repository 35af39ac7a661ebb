package state

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// clientLogger is where a client certificate that does not load, or has
// expired, is logged (LogTo's logger).
var clientLogger atomic.Pointer[slog.Logger]

func tlsLog() *slog.Logger {
	if l := clientLogger.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// clientPair is redis-cert-file and redis-key-file. Both are read again
// at each TLS handshake in which Redis asks for a client certificate (and
// at each scrape of the expiry metric: ClientCertificateExpiry), so
// that a renewed certificate is used from the next new connection on,
// without a restart (go-redis keeps the connections it has, which stay
// valid: Redis checks a certificate at the handshake only). A pair that
// does not load then (a key written before its certificate, a file half
// written or gone) is logged once, and the pair loaded before is used.
// Once in the process: its Stores each read the files (config.News).
type clientPair struct {
	certFile, keyFile string

	mu              sync.Mutex
	cert            *tls.Certificate // the pair in use
	certPEM, keyPEM []byte           // the files it was made from
	loaded          string           // config.Loaded of cert
	failed          string           // the failure met last, until a pair loads
}

// loadClientPair reads the pair at start: a pair that does not load
// stops the start.
func loadClientPair(certFile, keyFile string) (*clientPair, error) {
	certPEM, keyPEM, err := readFiles(certFile, keyFile)
	var cert *tls.Certificate
	if err == nil {
		cert, err = parseClientPair(certPEM, keyPEM)
	}
	if err != nil {
		return nil, err
	}
	p := &clientPair{certFile: certFile, keyFile: keyFile, cert: cert, certPEM: certPEM, keyPEM: keyPEM,
		loaded: config.Loaded(cert.Certificate[0])}
	config.News(p.key(), p.loaded)
	return p, nil
}

func (p *clientPair) key() string { return "redis-cert-file " + p.certFile + " " + p.keyFile }

// readFiles reads redis-cert-file and redis-key-file, each at most
// config.MaxPEMFile bytes: the wrong file named (a log, /dev/zero) is
// refused, not read whole at start or at each new connection. The error
// names the setting whose file did not read.
func readFiles(certFile, keyFile string) (certPEM, keyPEM []byte, err error) {
	if certPEM, err = config.ReadPEMFile(certFile); err != nil {
		return nil, nil, fmt.Errorf("redis-cert-file: %w", err)
	}
	if keyPEM, err = config.ReadPEMFile(keyFile); err != nil {
		return nil, nil, fmt.Errorf("redis-key-file: %w", err)
	}
	return certPEM, keyPEM, nil
}

func parseClientPair(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err == nil && cert.Leaf == nil { // GODEBUG=x509keypairleaf=0
		cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
	}
	if err != nil {
		if bytes.Contains(keyPEM, []byte("ENCRYPTED")) {
			err = fmt.Errorf("%w (the key is encrypted: give it unencrypted, readable only by this service)", err)
		}
		return nil, fmt.Errorf("redis-cert-file, redis-key-file: %w", err)
	}
	return &cert, nil
}

// get is tls.Config's GetClientCertificate.
func (p *clientPair) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return p.current(), nil
}

// current reads the pair again and returns the one a new connection
// presents: the pair read now, or the one loaded before when it does not
// load.
func (p *clientPair) current() *tls.Certificate {
	// Read under the lock: a read that began before a renewal must not
	// put the old pair back after one that began after it.
	p.mu.Lock()
	defer p.mu.Unlock()
	certPEM, keyPEM, err := readFiles(p.certFile, p.keyFile)
	var cert *tls.Certificate
	switch {
	case err == nil && bytes.Equal(certPEM, p.certPEM) && bytes.Equal(keyPEM, p.keyPEM):
		cert = p.cert // unchanged, as at nearly every call: nothing to parse
	case err == nil:
		if cert, err = parseClientPair(certPEM, keyPEM); err == nil {
			p.certPEM, p.keyPEM = certPEM, keyPEM
		}
	}
	log := tlsLog()
	switch {
	case err != nil:
		p.failed = err.Error()
		if config.News(p.key(), "error: "+p.failed) {
			log.Error("redis-cert-file and redis-key-file did not load; still using the pair loaded before",
				"err", err, "redis_cert_file", p.certFile, "redis_key_file", p.keyFile, "expires", p.cert.Leaf.NotAfter)
		}
	case !bytes.Equal(cert.Certificate[0], p.cert.Certificate[0]):
		p.cert, p.loaded, p.failed = cert, config.Loaded(cert.Certificate[0]), ""
		if config.News(p.key(), p.loaded) {
			log.Info("Redis client certificate loaded again", "redis_cert_file", p.certFile,
				"subject", cert.Leaf.Subject.String(), "expires", cert.Leaf.NotAfter)
		}
	default:
		p.failed = ""
		config.News(p.key(), p.loaded)
	}
	if leaf := p.cert.Leaf; time.Now().After(leaf.NotAfter) && config.News(p.key()+" expired", p.loaded) {
		log.Error("the Redis client certificate has expired: Redis refuses new connections with it; renew redis-cert-file and redis-key-file (read again at each new connection)",
			"redis_cert_file", p.certFile, "expired", leaf.NotAfter)
	}
	return p.cert
}

// failing reads the pair again and says whether it does not load now:
// the pair loaded before is in use.
func (p *clientPair) failing() bool {
	p.current()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed != ""
}

// TLSFilesFailing reads again the TLS files the Store reads as they
// change, redis-cert-file (with redis-key-file) and redis-ca-file, and
// says for each one set whether it does not load now, so that the one
// loaded before is still used.
func (s *Store) TLSFilesFailing() map[string]bool {
	m := map[string]bool{}
	if s.pair != nil {
		m["redis-cert-file"] = s.pair.failing()
	}
	if s.ca != nil {
		m["redis-ca-file"] = s.ca.Failing(tlsLog())
	}
	return m
}

// ClientCertificateExpiry says when the client certificate the Store's
// next new connection presents expires (redis-cert-file, read again
// now), and false when it presents none.
func (s *Store) ClientCertificateExpiry() (time.Time, bool) {
	if s.pair == nil {
		return time.Time{}, false
	}
	return s.pair.current().Leaf.NotAfter, true
}

// tlsDialer dials a rediss:// server as go-redis's own dialer does (the
// same keep-alive, the server name from the address unless cfg has one),
// but ends the TLS handshake at ctx's deadline, and says what a handshake
// without an answer most likely is: redis-server's plain port reads a TLS
// hello as the start of a command line and waits for its end, so a
// rediss:// URL with the plain port used to fail with "context deadline
// exceeded" alone. ca, redis-ca-file when set, is read again at each
// dial, so that a CA added to it is trusted from the next connection on.
func tlsDialer(cfg *tls.Config, ca *config.CAFile, w *handshakeWatch) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}}
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := cfg
		if c.ServerName == "" || ca != nil {
			c = cfg.Clone()
		}
		if c.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			c.ServerName = host
		}
		if ca != nil {
			c.RootCAs = ca.Pool(tlsLog())
		}
		tc := tls.Client(raw, c)
		// Marked before the handshake, and left marked when it ends
		// without an answer: a caller whose deadline ends it first
		// finds the mark (Store.explain).
		w.addr.Store(&addr)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			var ne net.Error
			var rh tls.RecordHeaderError
			switch {
			case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
				return nil, fmt.Errorf("TLS handshake with %s: no answer (%w): %s", addr, err, plainPortHint)
			case errors.As(err, &rh):
				w.addr.Store(nil)
				return nil, fmt.Errorf("TLS handshake with %s: the answer is not TLS (%w): %s", addr, err, plainPortHint)
			}
			w.addr.Store(nil)
			return nil, err
		}
		w.addr.Store(nil)
		return tc, nil
	}
}

// resetHint is what a connection made with cfg (nil: no TLS) says when
// Redis resets it before its first answer. With TLS 1.3 the client's side
// of the handshake ends before the server has checked the client's
// certificate: a Redis that refuses it (or its lack of one) sends its
// alert after the client's first command, and when it closes the
// connection with that command unread, the kernel resets it and the alert
// is lost. The error was then "connection reset by peer" alone.
func resetHint(cfg *tls.Config) string {
	switch {
	case cfg == nil:
		return ""
	case cfg.GetClientCertificate != nil || len(cfg.Certificates) > 0:
		return resetHintCert
	}
	return resetHintNoCert
}

const (
	resetHintCert   = "Redis reset the connection before its first answer: it most likely refused the client certificate (redis-cert-file: its CA is not redis-server's tls-ca-cert-file, or it has expired; redis-server's log says which)"
	resetHintNoCert = "Redis reset the connection before its first answer: it most likely requires a client certificate (redis-server's tls-auth-clients; give one with redis-cert-file and redis-key-file)"
)

const plainPortHint = "is it redis-server's tls-port? Its plain port never answers a TLS handshake (rediss://)"

// handshakeWatch is the address of a TLS handshake with Redis under way,
// or that ended without an answer, since the last one that did not.
type handshakeWatch struct{ addr atomic.Pointer[string] }

// explain adds to err, a command's context deadline, that a TLS handshake
// with Redis had no answer when it came: go-redis dials in a goroutine of
// its own, and a command whose deadline comes first fails with "context
// deadline exceeded" alone.
func (s *Store) explain(err error) error {
	if s.handshakes == nil || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if addr := s.handshakes.addr.Load(); addr != nil {
		return fmt.Errorf("%w: the TLS handshake with %s had no answer: %s", err, *addr, plainPortHint)
	}
	return err
}
