package state

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Conn says how to reach Redis: one primary at a redis://, rediss:// or
// unix:// URL, or found through Redis Sentinel when the URL names the
// master (?master_name=), and for rediss:// the files of a private CA and
// of a client certificate. Every role that uses Redis has these settings.
type Conn struct {
	URL      string
	CAFile   string
	CertFile string
	KeyFile  string
	// Timeout, when set, bounds each dial, read and write, and makes
	// requests end at their context's deadline: for a command that must
	// answer soon (dovewarden status), not for the serving roles.
	Timeout time.Duration
	// Deadlines makes requests end at their context's deadline without
	// changing the library's own timeouts: for a caller that bounds each
	// of its calls (ingest: the stamp and the pending mark must not hold
	// Dovecot's answer past its exporter timeout), whose calls are safe to
	// cut short (read-only, or idempotent like a pending mark).
	Deadlines bool
}

// RegisterFlags declares redis-url, described by usage, and the TLS files
// on fs.
func (c *Conn) RegisterFlags(fs *flag.FlagSet, usage string) {
	fs.StringVar(&c.URL, "redis-url", "", usage)
	fs.StringVar(&c.CAFile, "redis-ca-file", "", "PEM file of the CA certificates that sign the Redis server's certificate (rediss://); default: the system's")
	fs.StringVar(&c.CertFile, "redis-cert-file", "", "PEM client certificate for a Redis server that requires one (rediss://; with redis-key-file)")
	fs.StringVar(&c.KeyFile, "redis-key-file", "", "PEM private key of redis-cert-file")
}

// Validate checks the settings without connecting: the URL's form and
// options, and the TLS files (read and parsed). Each error names its
// setting and never shows a password.
func (c Conn) Validate() error {
	_, _, _, err := c.client(nil)
	return err
}

// Open connects to Redis as c says (lazily: the first command dials).
func Open(c Conn) (*Store, error) {
	w := &handshakeWatch{}
	rdb, pair, ca, err := c.client(w)
	if err != nil {
		return nil, err
	}
	st := New(rdb)
	st.handshakes, st.pair, st.ca = w, pair, ca
	return st, nil
}

// client checks c and, when w is set, returns the go-redis client it
// describes, whose TLS handshakes w watches, its client certificate (nil
// without redis-cert-file) and its CAs (nil without redis-ca-file).
func (c Conn) client(w *handshakeWatch) (redis.UniversalClient, *clientPair, *config.CAFile, error) {
	shown := config.RedactURL(c.URL)
	u, err := url.Parse(c.URL)
	if err != nil && strings.Contains(c.URL, "@") {
		// Its scheme may well be right: shown says what is likely wrong.
		return nil, nil, nil, fmt.Errorf("redis-url %s", shown)
	}
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
		return nil, nil, nil, fmt.Errorf("redis-url: want redis://, rediss:// or unix://, got %q", shown)
	}
	var simple *redis.Options
	var failover *redis.FailoverOptions
	if u.Query().Has("master_name") {
		if u.Scheme == "unix" {
			return nil, nil, nil, fmt.Errorf("redis-url %s: master_name needs redis:// or rediss:// and a Sentinel's address", shown)
		}
		if failover, err = redis.ParseFailoverURL(c.URL); err == nil && failover.MasterName == "" {
			err = errors.New("master_name is empty")
		}
	} else {
		simple, err = redis.ParseURL(c.URL)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("redis-url %s: %w", shown, err)
	}
	var pair *clientPair
	var ca *config.CAFile
	if failover != nil {
		failover.TLSConfig, pair, ca, err = c.tlsConfig(u.Scheme, failover.TLSConfig)
	} else {
		simple.TLSConfig, pair, ca, err = c.tlsConfig(u.Scheme, simple.TLSConfig)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	if w == nil {
		return nil, nil, nil, nil
	}
	if failover != nil {
		if failover.TLSConfig != nil {
			failover.Dialer = tlsDialer(failover.TLSConfig, ca, w)
		}
		if c.Timeout > 0 {
			failover.DialTimeout, failover.ReadTimeout, failover.WriteTimeout = c.Timeout, c.Timeout, c.Timeout
			failover.ContextTimeoutEnabled, failover.DialerRetries = true, 1
		}
		failover.ContextTimeoutEnabled = failover.ContextTimeoutEnabled || c.Deadlines
		rdb := redis.NewFailoverClient(failover)
		rdb.AddHook(firstWords{resetHint: resetHint(failover.TLSConfig)})
		return rdb, pair, ca, nil
	}
	if simple.TLSConfig != nil {
		simple.Dialer = tlsDialer(simple.TLSConfig, ca, w)
	}
	if c.Timeout > 0 {
		simple.DialTimeout, simple.ReadTimeout, simple.WriteTimeout = c.Timeout, c.Timeout, c.Timeout
		simple.ContextTimeoutEnabled, simple.DialerRetries = true, 1
	}
	simple.ContextTimeoutEnabled = simple.ContextTimeoutEnabled || c.Deadlines
	rdb := redis.NewClient(simple)
	rdb.AddHook(firstWords{resetHint: resetHint(simple.TLSConfig)})
	return rdb, pair, ca, nil
}

// firstWords is a go-redis hook that keeps what Redis says as it refuses a
// new connection: past maxclients ("ERR max number of clients reached"),
// or in protected mode ("DENIED ..."), it answers the first command with
// an error and closes the connection. go-redis takes an error answer to
// its HELLO for an older server's, sends the next commands, and reports
// only their failed write ("write: broken pipe") or the end of the
// connection ("EOF"). The connections it dials remember the error they
// read first, and a read or write that then fails says it. A TLS
// connection that Redis resets before any answer says why that most likely
// is (resetHint).
type firstWords struct{ resetHint string }

func (w firstWords) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// go-redis checks a pooled connection's health on its socket,
		// found with syscall.Conn or NetConn: the wrapper shows the
		// same as the connection it wraps.
		if sc, ok := c.(syscall.Conn); ok {
			return &saidSyscallConn{saidConn: saidConn{Conn: c, resetHint: w.resetHint}, sc: sc}, nil
		}
		return &saidConn{Conn: c, resetHint: w.resetHint}, nil
	}
}

func (firstWords) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (firstWords) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// saidConn remembers the error line that began the first answer read
// from it, and adds it to a failed read's or write's error until a second answer
// shows the connection alive (a Redis older than 6.0 answers HELLO with
// an error and goes on serving).
type saidConn struct {
	net.Conn
	first     atomic.Bool            // an answer was read
	said      atomic.Pointer[string] // its error line, when it began with one
	resetHint string                 // said of a reset before the first answer
}

// maxSaid bounds the error line kept.
const maxSaid = 256

func (c *saidConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	switch {
	case n == 0:
	case !c.first.Load():
		c.first.Store(true)
		if line := p[:n]; line[0] == '-' {
			if i := bytes.IndexByte(line, '\r'); i >= 0 {
				line = line[:i]
			}
			said := string(line[1:min(len(line), maxSaid)])
			c.said.Store(&said)
		}
	case c.said.Load() != nil:
		c.said.Store(nil)
	}
	// Redis's close can come back as the end of the next read rather
	// than a failed write.
	return n, c.explain(err)
}

func (c *saidConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	return n, c.explain(err)
}

// explain adds to a failed read's or write's err what Redis said first,
// or, for a reset before its first answer, why that most likely is.
func (c *saidConn) explain(err error) error {
	said := c.said.Load()
	switch {
	case err == nil:
	case said != nil:
		return &refusedError{err: err, said: *said}
	case c.resetHint != "" && !c.first.Load() && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)):
		return &hinted{err: err, hint: c.resetHint}
	}
	return err
}

// NetConn is the connection c wraps, as crypto/tls.Conn's NetConn is.
func (c *saidConn) NetConn() net.Conn { return c.Conn }

// saidSyscallConn is a saidConn of a connection with a socket of its own
// (TCP, Unix), which it gives to go-redis's health check.
type saidSyscallConn struct {
	saidConn
	sc syscall.Conn
}

func (c *saidSyscallConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

// refusedError is a failed read or write on a connection Redis refused,
// with what Redis said.
type refusedError struct {
	err  error
	said string
}

func (e *refusedError) Error() string {
	return e.err.Error() + " (Redis refused the connection: " + strconv.Quote(e.said) + ")"
}

// Unwrap gives errors.Is and errors.As the write's error. It is the list
// form on purpose: go-redis hands its caller errors.Unwrap of a failed
// connection setup's error, which looks only at the single form, so that
// what Redis said reaches the caller.
func (e *refusedError) Unwrap() []error { return []error{e.err} }

// hinted is err with a hint of its most likely cause.
type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() + ": " + h.hint }

// Unwrap is the list form, as refusedError's, so that go-redis's
// errors.Unwrap of a failed connection setup's error keeps the hint.
func (h *hinted) Unwrap() []error { return []error{h.err} }

// tlsConfig adds the CA and the client certificate to base, the TLS
// configuration go-redis derived from a rediss:// URL (the server name,
// skip_verify), and returns it with the client certificate's pair and
// redis-ca-file (nil when unset), which the dialer reads again at each
// new connection.
func (c Conn) tlsConfig(scheme string, base *tls.Config) (*tls.Config, *clientPair, *config.CAFile, error) {
	if scheme != "rediss" {
		var errs []error
		for _, f := range []struct{ name, v string }{{"redis-ca-file", c.CAFile}, {"redis-cert-file", c.CertFile}, {"redis-key-file", c.KeyFile}} {
			if f.v != "" {
				errs = append(errs, fmt.Errorf("%s: needs a rediss:// redis-url (TLS)", f.name))
			}
		}
		return base, nil, nil, errors.Join(errs...)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, nil, nil, errors.New("redis-cert-file and redis-key-file: set both or neither")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if base != nil {
		cfg = base.Clone()
		cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	}
	var ca *config.CAFile
	if c.CAFile != "" {
		var err error
		if ca, err = config.LoadCAFile("redis-ca-file", c.CAFile); err != nil {
			return nil, nil, nil, err
		}
		cfg.RootCAs = ca.Pool(tlsLog())
	}
	if c.CertFile == "" {
		return cfg, nil, ca, nil
	}
	pair, err := loadClientPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, nil, nil, err
	}
	cfg.Certificates, cfg.GetClientCertificate = nil, pair.get
	return cfg, pair, ca, nil
}

// LogTo sends what the Redis client library logs (failed dials, a
// Sentinel's announcement of a new primary) to log at warning level,
// instead of the library's own plain lines on standard error. The library
// has one logger per process: the last call wins. Its lines are logged
// 5 times a minute per format: it logs a failed dial at every command
// while Redis is down. Each call starts that count afresh.
// A client certificate (redis-cert-file) that does not load when it is
// read again, or has expired, is logged to log too.
func LogTo(log *slog.Logger) {
	redis.SetLogger(clientLog{log, lograte.PerMinute(5)})
	clientLogger.Store(log)
}

type clientLog struct {
	log   *slog.Logger
	lines *lograte.Limiter
}

func (l clientLog) Printf(ctx context.Context, format string, v ...any) {
	l.lines.Log(ctx, l.log, slog.LevelWarn, format, "redis client", "detail", fmt.Sprintf(format, v...))
}
