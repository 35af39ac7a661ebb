package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// KeyPair is the certificate and key a role serves TLS with, read from
// --tls-cert-file and --tls-key-file. A renewed certificate is taken up
// without a restart: each TLS handshake looks at both files, and when
// either has changed since they were read, reads them again. A pair that
// does not load then (a key written before its certificate, a file gone,
// one the process may not read) is logged and counted once, and the pair
// loaded before stays in use, so a bad renewal never stops the service;
// the next change of either file (a chmod too) is tried again.
type KeyPair struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]fileStamp // certFile's and keyFile's when cert was read
	tried   [2]fileStamp // the last pair that failed, not retried until it changes
	expires prometheus.Gauge
	failed  prometheus.Counter
	failing prometheus.Gauge
}

// fileStamp tells whether a file changed: certbot and Kubernetes Secrets
// replace the file (a new inode behind the same name), an editor may
// rewrite it in place, and a chmod or chown changes only its ctime.
type fileStamp struct {
	mod, changed time.Time
	size         int64
	ino          uint64
	missing      bool // stat failed: gone, or a link to nothing
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{missing: true}
	}
	s := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	s.ino, s.changed = inodeAndCtime(fi)
	return s
}

// LoadKeyPair reads the certificate (PEM, the leaf first, then the
// intermediates) and its private key. Errors name the settings.
func LoadKeyPair(certFile, keyFile string, log *slog.Logger) (*KeyPair, error) {
	k := &KeyPair{certFile: certFile, keyFile: keyFile, log: log,
		expires: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prometheus.BuildFQName(metrics.Namespace, "tls", "certificate_expiry_timestamp_seconds"),
			Help: "When the certificate the listener serves (tls-cert-file) expires, as a Unix time.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(metrics.Namespace, "tls", "certificate_reload_failures_total"),
			Help: "Changes of tls-cert-file or tls-key-file after which the pair did not load; the certificate loaded before was still served.",
		}),
		failing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prometheus.BuildFQName(metrics.Namespace, "tls", "certificate_reload_failing"),
			Help: "1 while tls-cert-file or tls-key-file changed and the pair did not load (the certificate loaded before is served), 0 when the served pair is the files'.",
		}),
	}
	stamp := k.stamps()
	cert, err := k.read()
	if err != nil {
		return nil, err
	}
	k.use(stamp, cert)
	return k, nil
}

// Collectors are the pair's metrics, for the role's registry. A scrape
// looks at the files too, as a handshake does: a renewal is then seen
// (or its failure reported) while every client keeps its connection.
func (k *KeyPair) Collectors() []prometheus.Collector {
	return []prometheus.Collector{lookFirst{k, k.expires}, lookFirst{k, k.failed}, lookFirst{k, k.failing}}
}

// lookFirst is one of the pair's metrics, collected after the pair looked
// at its files.
type lookFirst struct {
	k *KeyPair
	prometheus.Collector
}

func (l lookFirst) Collect(ch chan<- prometheus.Metric) {
	l.k.GetCertificate(nil)
	l.Collector.Collect(ch)
}

// stamps are both files' stamps now, taken before they are read: a file
// replaced while it is read is read again at the next handshake.
func (k *KeyPair) stamps() [2]fileStamp {
	return [2]fileStamp{stampOf(k.certFile), stampOf(k.keyFile)}
}

// read loads both files.
func (k *KeyPair) read() (*tls.Certificate, error) {
	certPEM, err := config.ReadPEMFile(k.certFile)
	if err != nil {
		return nil, fmt.Errorf("tls-cert-file: %w", err)
	}
	keyPEM, err := config.ReadPEMFile(k.keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls-key-file: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if bytes.Contains(keyPEM, []byte("ENCRYPTED")) {
			err = fmt.Errorf("%w (the key is encrypted: give it unencrypted, readable only by this service)", err)
		}
		return nil, fmt.Errorf("tls-cert-file %s and tls-key-file %s: %w", k.certFile, k.keyFile, err)
	}
	if cert.Leaf == nil { // GODEBUG=x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls-cert-file %s: %w", k.certFile, err)
		}
	}
	return &cert, nil
}

// use makes cert the one served. Called with k.mu held, or before k is
// shared.
func (k *KeyPair) use(stamp [2]fileStamp, cert *tls.Certificate) {
	k.cert, k.stamp, k.tried = cert, stamp, [2]fileStamp{}
	k.expires.Set(float64(cert.Leaf.NotAfter.Unix()))
	k.failing.Set(0)
	if len(cert.Certificate) == 1 && !bytes.Equal(cert.Leaf.RawIssuer, cert.Leaf.RawSubject) {
		k.log.Info("tls-cert-file holds the server's certificate alone: clients must have its issuer among their CAs; for one from an intermediate CA, give the full chain (certbot's fullchain.pem)",
			"tls_cert_file", k.certFile, "issuer", cert.Leaf.Issuer.String())
	}
	// Served all the same: clients decide, and an expired certificate
	// is better than none while a renewal is on its way.
	switch now := time.Now(); {
	case now.After(cert.Leaf.NotAfter):
		k.log.Error("the TLS certificate has expired: clients that check it refuse it", "tls_cert_file", k.certFile, "expired", cert.Leaf.NotAfter)
	case now.Before(cert.Leaf.NotBefore):
		k.log.Warn("the TLS certificate is not valid yet: clients that check it refuse it until then", "tls_cert_file", k.certFile, "valid_from", cert.Leaf.NotBefore)
	}
}

// GetCertificate is the listener's tls.Config.GetCertificate: the pair
// loaded last, read again first when its files changed.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.stamps()
	if now == k.stamp {
		if k.tried != ([2]fileStamp{}) {
			// Back to the files served (a renewal rolled back): no
			// longer failing.
			k.tried = [2]fileStamp{}
			k.failing.Set(0)
		}
		return k.cert, nil
	}
	if now == k.tried {
		return k.cert, nil
	}
	cert, err := k.read()
	if err != nil {
		k.tried = now
		k.failed.Inc()
		k.failing.Set(1)
		k.log.Error("TLS certificate changed but did not load; still serving the one loaded before", "err", err, "expires", k.cert.Leaf.NotAfter)
		return k.cert, nil
	}
	k.use(now, cert)
	k.log.Info("TLS certificate loaded again", "subject", cert.Leaf.Subject.String(), "expires", cert.Leaf.NotAfter)
	return cert, nil
}

// Served is the certificate served now (leaf first, DER).
func (k *KeyPair) Served() [][]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cert.Certificate
}

// ServerConfig is the TLS configuration of a listener serving this pair.
func (k *KeyPair) ServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: k.GetCertificate}
}
