package config

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"sync"
)

// CAFile is a file of PEM CA certificates, the value of a setting, that a
// server's certificate is checked against instead of the system's CAs.
// It is read at start (LoadCAFile), where a file that does not load stops
// the start, and again at each use (Pool): a CA rotation adds the new CA
// to the file before the servers' certificates change (a Kubernetes
// Secret or a trust bundle mounted as a file is updated in place), and
// the new CA is trusted from the next connection on, without a restart.
// A file that does not load then (written half, gone, no certificate in
// it) is logged once, and the CAs loaded before are used.
type CAFile struct {
	setting, path string

	mu     sync.Mutex
	pem    []byte         // the file's content the pool was made from
	loaded string         // Loaded(pem)
	pool   *x509.CertPool // the CAs in use
	n      int            // certificates in pool
	failed string         // the failure met last, until the file loads
}

// LoadCAFile reads path, the value of setting, at start.
func LoadCAFile(setting, path string) (*CAFile, error) {
	b, pool, n, err := readCAs(setting, path)
	if err != nil {
		return nil, err
	}
	c := &CAFile{setting: setting, path: path, pem: b, loaded: Loaded(b), pool: pool, n: n}
	// Recorded only as the first news of the file: a change another
	// reader has not logged yet (the file changed since that reader was
	// set up) stays news for it, or for this one, to log.
	news.LoadOrStore(c.key(), c.loaded)
	return c, nil
}

func (c *CAFile) key() string { return c.setting + " " + c.path }

// CAPool reads the PEM CA certificates in path, the value of setting, to
// verify a server's certificate with instead of the system's: for a
// command that runs once (a CAFile is read again at each use).
func CAPool(setting, path string) (*x509.CertPool, error) {
	_, pool, _, err := readCAs(setting, path)
	return pool, err
}

// Pool reads the file again and returns the CAs to check a new
// connection's server certificate against: the file's, or those loaded
// before when it does not load now. The pool is the same value as long
// as the file's content is, so that a caller can keep what it built from
// it until it changes. What happened is logged to log.
func (c *CAFile) Pool(log *slog.Logger) *x509.CertPool {
	// Read under the lock: a read that began before a change must not
	// put the old content back after one that began after it.
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := readCAFile(c.path)
	if err == nil && bytes.Equal(b, c.pem) {
		// Unchanged, as at nearly every call: nothing to parse. It can
		// still be news: the file loads again after a failure, or
		// another reader of it logged another content last (a change
		// back to this one, which no reader logged yet).
		c.failed = ""
		if News(c.key(), c.loaded) {
			log.Info(c.setting+" loaded again", c.setting, c.path, "certificates", c.n)
		}
		return c.pool
	}
	var pool *x509.CertPool
	var n int
	if err != nil {
		err = fmt.Errorf("%s: %w", c.setting, err)
	} else {
		pool, n, err = parseCAs(c.setting, c.path, b)
	}
	if err != nil {
		c.failed = err.Error()
		if News(c.key(), "error: "+c.failed) {
			log.Error(c.setting+" did not load; still using the CA certificates loaded before",
				"err", err, c.setting, c.path, "certificates", c.n)
		}
		return c.pool
	}
	c.pem, c.loaded, c.pool, c.n, c.failed = b, Loaded(b), pool, n, ""
	if News(c.key(), c.loaded) {
		log.Info(c.setting+" loaded again", c.setting, c.path, "certificates", n)
	}
	return c.pool
}

// Failing reads the file again, as Pool does, and says whether it does
// not load now: the CAs loaded before are in use.
func (c *CAFile) Failing(log *slog.Logger) bool {
	c.Pool(log)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed != ""
}

// MaxCAFile bounds a CA file: a system's whole bundle is some 200 KB.
const MaxCAFile = 16 << 20

// readCAFile reads a CA file, refusing one over MaxCAFile
// (ReadFileAtMost): the wrong file named, or a device that never ends,
// is not read whole at start, nor at each connection (Pool).
func readCAFile(path string) ([]byte, error) {
	return ReadFileAtMost(path, MaxCAFile, "PEM CA certificates")
}

// readCAs reads and parses path (parseCAs).
func readCAs(setting, path string) ([]byte, *x509.CertPool, int, error) {
	b, err := readCAFile(path)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("%s: %w", setting, err)
	}
	pool, n, err := parseCAs(setting, path, b)
	return b, pool, n, err
}

// parseCAs parses b, the content of path. A CERTIFICATE block Go does
// not parse is left out, as x509.CertPool.AppendCertsFromPEM does (a
// system bundle may hold one), but a file must hold at least one
// certificate, and a block cut short (a file read while it is written)
// fails the whole file rather than leaving out the CAs after the cut.
func parseCAs(setting, path string, b []byte) (*x509.CertPool, int, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			if cutShort(rest) {
				return nil, 0, fmt.Errorf("%s %s: a PEM block is cut short (the file half written?)", setting, path)
			}
			break
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, 0, fmt.Errorf("%s %s: no PEM certificate in it", setting, path)
	}
	return pool, n, nil
}

// cutShort says whether rest, what follows a file's last whole PEM block,
// is the start of another: a block without its end, or a last line that
// is the beginning of "-----BEGIN". A file cut right after a block's end
// cannot be told from a whole one.
func cutShort(rest []byte) bool {
	begin := []byte("-----BEGIN")
	if bytes.Contains(rest, begin) {
		return true
	}
	t := bytes.TrimRight(rest, " \t\r\n")
	last := t[bytes.LastIndexByte(t, '\n')+1:]
	return len(last) > 0 && bytes.HasPrefix(begin, last)
}

// news is, by file (a setting and its path), what this process logged of
// it last: the content it loaded (Loaded), or the error it did not load
// with. Several readers of one file each notice its change (sync's two
// Redis clients, local mode's three): the first one logs it.
var news sync.Map

// News records what a reader of the file key found (Loaded of its
// content, or an error), and says whether that is news to the process:
// whether it differs from what the last reader of key recorded.
func News(key, what string) bool {
	prev, ok := news.Swap(key, what)
	return !ok || prev.(string) != what
}

// Loaded is what News records for a file that loaded with content b.
func Loaded(b []byte) string {
	sum := sha256.Sum256(b)
	return "loaded " + hex.EncodeToString(sum[:])
}
