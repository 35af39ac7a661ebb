package server

import (
	"context"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
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
	lines *lograte.Limiter
}

// errLogBurst is how many lines of one kind are logged in a minute.
const errLogBurst = 5

func newServerErrors(log *slog.Logger) *serverErrors {
	e := &serverErrors{log: log, lines: lograte.PerMinute(errLogBurst),
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
	e.lines.Log(context.Background(), e.log, slog.LevelWarn, kind, msg, "kind", kind, "counted_in", "dovewarden_http_server_errors_total")
	return len(p), nil
}
