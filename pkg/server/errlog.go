package server

import (
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serverErrors takes net/http's own error log: a failed TLS handshake (a
// port scanner, a client that distrusts the certificate, plain HTTP sent
// to the HTTPS port), a handler's panic, an accept that failed. Anyone who
// reaches the port can make such lines, one per connection, so each kind
// is counted, and logged at most errLogBurst times a minute; the next line
// logged says how many were left out.
type serverErrors struct {
	log   *slog.Logger
	count *prometheus.CounterVec
	now   func() time.Time

	mu    sync.Mutex
	kinds map[string]*errWindow
}

// errWindow is one kind's minute of logging.
type errWindow struct {
	start   time.Time
	logged  int
	skipped int
}

// errLogBurst is how many lines of one kind are logged in a minute.
const errLogBurst = 5

func newServerErrors(log *slog.Logger) *serverErrors {
	e := &serverErrors{log: log, now: time.Now, kinds: map[string]*errWindow{},
		count: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dovewarden_http_server_errors_total",
			Help: "Errors net/http reported on the listener, by kind: tls_handshake (a connection whose TLS handshake failed) or other (a handler's panic, a failed accept)."}, []string{"kind"})}
	for _, k := range []string{"tls_handshake", "other"} {
		e.count.WithLabelValues(k)
	}
	return e
}

// Write takes one line of net/http's log.
func (e *serverErrors) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	kind := "other"
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		kind = "tls_handshake"
	}
	e.count.WithLabelValues(kind).Inc()
	now := e.now()
	e.mu.Lock()
	w := e.kinds[kind]
	if w == nil || now.Sub(w.start) >= time.Minute {
		if w == nil {
			w = &errWindow{}
			e.kinds[kind] = w
		}
		*w = errWindow{start: now, skipped: w.skipped}
	}
	if w.logged >= errLogBurst {
		w.skipped++
		e.mu.Unlock()
		return len(p), nil
	}
	w.logged++
	skipped := w.skipped
	w.skipped = 0
	e.mu.Unlock()
	if skipped > 0 {
		e.log.Warn(msg, "kind", kind, "left_out_before", skipped, "counted_in", "dovewarden_http_server_errors_total")
	} else {
		e.log.Warn(msg, "kind", kind)
	}
	return len(p), nil
}
