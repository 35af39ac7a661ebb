// Package server runs a role's HTTP server: its routes plus /healthz,
// /readyz and /metrics, structured logs, and a graceful shutdown on SIGTERM.
package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// Options are the settings every serving role shares.
type Options struct {
	Listen          string
	LogFormat       string
	LogLevel        string
	ShutdownTimeout time.Duration
	// WriteTimeout bounds writing one response; zero means 30s. The sync
	// function sets its own: a dsync can take minutes. Not a shared flag.
	WriteTimeout time.Duration
	// TLSCertFile and TLSKeyFile, when set, make the listener serve
	// HTTPS with that certificate; LoadTLS reads them into KeyPair.
	TLSCertFile, TLSKeyFile string
	KeyPair                 *KeyPair
	// MaxConnections bounds the connections served at once (connLimit);
	// zero means no bound.
	MaxConnections int
	// Metrics, when set, takes the connection bound's metrics.
	Metrics prometheus.Registerer
}

// RegisterFlags declares the shared settings on fs. defaultListen is used
// unless PORT (set by Knative) says otherwise.
func (o *Options) RegisterFlags(fs *flag.FlagSet, getenv func(string) string, defaultListen string) {
	if p := getenv("PORT"); p != "" {
		defaultListen = ":" + p
	}
	fs.StringVar(&o.Listen, "listen", defaultListen, "address to serve HTTP on (host:port); Knative's PORT sets the default")
	fs.StringVar(&o.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight requests may finish after SIGTERM")
	fs.StringVar(&o.TLSCertFile, "tls-cert-file", "", "PEM certificate (leaf first, then intermediates) to serve HTTPS with, read again when it changes; empty: plain HTTP")
	fs.StringVar(&o.TLSKeyFile, "tls-key-file", "", "PEM private key of tls-cert-file")
	fs.IntVar(&o.MaxConnections, "max-connections", DefaultMaxConnections, "connections served at once; past it a new connection closes the longest idle keep-alive one (or else a new one quiet for a second), or waits for one to end")
}

// Validate checks the shared settings; errors name the setting.
func (o *Options) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: %w", o.Listen, err))
	}
	if _, err := NewLogger(io.Discard, o.LogFormat, o.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if o.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("shutdown-timeout %s: must be positive", o.ShutdownTimeout))
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls-cert-file and tls-key-file: set both or neither"))
	}
	if o.MaxConnections < 1 {
		errs = append(errs, fmt.Errorf("max-connections %d: must be at least 1", o.MaxConnections))
	}
	return errors.Join(errs...)
}

// LoadTLS reads --tls-cert-file and --tls-key-file into o.KeyPair, unless
// they are unset or already read, and registers the pair's metrics on reg.
func (o *Options) LoadTLS(log *slog.Logger, reg prometheus.Registerer) error {
	if o.KeyPair != nil || o.TLSCertFile == "" {
		return nil
	}
	kp, err := LoadKeyPair(o.TLSCertFile, o.TLSKeyFile, log)
	if err != nil {
		return err
	}
	for _, c := range kp.Collectors() {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("tls metrics: %w", err)
		}
	}
	o.KeyPair = kp
	return nil
}

// NewLogger makes a slog logger writing format ("text" or "json") at level.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log-level %q: want debug, info, warn or error", level)
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, fmt.Errorf("log-format %q: want text or json", format)
}

// Health tracks readiness. The zero value is not ready.
type Health struct{ ready atomic.Bool }

// SetReady marks the role ready (or not) to take traffic.
func (h *Health) SetReady(v bool) { h.ready.Store(v) }

// Mount adds /healthz, /readyz and /metrics to mux; log takes what a
// scrape could not gather.
func (h *Health) Mount(mux *http.ServeMux, reg *prometheus.Registry, log *slog.Logger) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !h.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", metrics.Handler(reg, log))
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		mux.Handle(path, OnlyGet)
	}
}

// OnlyGet answers 405 with "Allow: GET, HEAD". Mounted on a path beside
// its "GET" pattern, it takes the other methods there: without it they
// fall through to a catch-all "/" (ingest's, answering 404 "post Dovecot
// events to / or /events", or a broker's ingress).
var OnlyGet http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method "+r.Method+" not allowed: use GET", http.StatusMethodNotAllowed)
})

// Serve listens on o.Listen and serves h as ServeListener does.
func Serve(ctx context.Context, log *slog.Logger, o Options, h http.Handler, ready func(addr net.Addr)) error {
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.Listen, err)
	}
	return ServeListener(ctx, log, o, ln, h, ready)
}

// ServeListener serves h on ln until ctx ends. Then it stops taking
// requests and lets in-flight ones finish within o.ShutdownTimeout; past
// that it cancels their contexts, so each can hand its work back (the sync
// function releases its lock, leaves the change pending and answers 503,
// which the Broker redelivers), and waits up to drain for those answers.
// ready is called once serving, with the listener's address.
func ServeListener(ctx context.Context, log *slog.Logger, o Options, ln net.Listener, h http.Handler, ready func(addr net.Addr)) error {
	wt := o.WriteTimeout
	if wt <= 0 {
		wt = 30 * time.Second
	}
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	errs := newServerErrors(log)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      wt,
		IdleTimeout:       120 * time.Second,
		// Dovecot's exporter sends well under 1 KiB of headers, a
		// Broker's CloudEvent a few; net/http's default would read up
		// to 1 MiB from any client before a handler could refuse it.
		MaxHeaderBytes: maxHeaderBytes,
		// HTTP/1.1 only, over TLS too: Dovecot's client speaks nothing
		// else, and at the stop's deadline ending a stalled read closes
		// an HTTP/2 connection with every stream on it, the answers of
		// the requests handing their work back among them.
		Protocols:   http1Only(),
		ErrorLog:    stdlog.New(errs, "", 0),
		BaseContext: func(net.Listener) context.Context { return base },
	}
	var limit *connLimit
	if o.MaxConnections > 0 {
		limit = newConnLimit(o.MaxConnections, log)
		warnFewFiles(log, o.MaxConnections)
	}
	unread := newUnreadConns(limit)
	if o.Metrics != nil {
		cs := []prometheus.Collector{unread, errs.count}
		if limit != nil {
			cs = append(cs, limit.collectors...)
		}
		for _, c := range cs {
			if err := o.Metrics.Register(c); err != nil {
				ln.Close()
				return fmt.Errorf("connection metrics: %w", err)
			}
		}
	}
	srv.ConnState = unread.connState
	var served net.Listener = ln
	if limit != nil {
		served = &limitListener{Listener: ln, limit: limit, conns: unread, closed: make(chan struct{})}
	}
	// At the stop, and again while it lasts: a TLS connection counts as
	// unused only once it has been quiet for tlsQuiet, and one whose
	// handshake ended just before the stop would otherwise be left to
	// net/http, which waits 5 s for a new connection.
	stopped := make(chan struct{})
	defer close(stopped)
	var closing sync.Once
	srv.RegisterOnShutdown(func() {
		closing.Do(func() {
			t := time.NewTicker(tlsQuiet / 4)
			defer t.Stop()
			for {
				if n := unread.closeUnread(); n > 0 {
					log.Debug("closed connections on which no request had begun", "connections", n)
				}
				select {
				case <-stopped:
					return
				case <-t.C:
				}
			}
		})
	})
	errc := make(chan error, 1)
	scheme := "http"
	if o.KeyPair != nil {
		scheme = "https"
		srv.TLSConfig = o.KeyPair.ServerConfig()
		go func() { errc <- srv.ServeTLS(readListener{Listener: served, tls: true}, "", "") }()
	} else {
		go func() { errc <- srv.Serve(readListener{Listener: served}) }()
	}
	log.Info("serving", "addr", ln.Addr().String(), "scheme", scheme, "write_timeout", wt)
	if ready != nil {
		ready(ln.Addr())
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", o.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err == nil {
		return nil
	}
	log.Warn("requests still running at the shutdown timeout; cancelling them so they hand their work back")
	cancelBase()
	// A handler still reading a body a client stopped sending is not
	// woken by its context: its read fails now instead.
	unread.endReads()
	dctx, dcancel := context.WithTimeout(context.Background(), drain)
	defer dcancel()
	if err := srv.Shutdown(dctx); err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// readHeaderTimeout bounds reading a request's headers. net/http starts it
// at a keep-alive connection's next request only once 4 bytes of it are
// in; closeForNew takes a connection quiet that long for idle.
const readHeaderTimeout = 5 * time.Second

// maxHeaderBytes bounds a request's headers.
const maxHeaderBytes = 64 << 10

func http1Only() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}

// drain bounds the wait for cancelled requests to answer.
const drain = 10 * time.Second
