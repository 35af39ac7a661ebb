// Package metrics is the one place for dovewarden's Prometheus metric names,
// and the registry every role serves at /metrics.
package metrics

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric.
const Namespace = "dovewarden"

// Ingest metric names (without the namespace).
const (
	IngestEventsReceived   = "ingest_events_received_total"
	IngestEventsAccepted   = "ingest_events_accepted_total"
	IngestEventsDropped    = "ingest_events_dropped_total"
	IngestRequestsRejected = "ingest_requests_rejected_total"
	IngestRequestSeconds   = "ingest_request_duration_seconds"
	IngestSendSeconds      = "ingest_send_duration_seconds"
	IngestSendFailures     = "ingest_send_failures_total"
	IngestPendingMarks     = "ingest_pending_marks_total"
	IngestChangesLost      = "ingest_changes_lost_total"
	IngestLastEvent        = "ingest_last_event_timestamp_seconds"
	IngestObserveFailures  = "ingest_observe_failures_total"
)

// NewRegistry returns a registry of the project's own, with the Go runtime
// and process collectors that operators expect.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg in the Prometheus exposition format. A collector that
// fails (one that reads Redis at scrape time while Redis is unreachable)
// drops only its own series: the rest is served with 200, the failure is
// logged on log (when not nil) and counted in
// promhttp_metric_handler_errors_total{cause="gathering"}.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	o := promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError}
	if log != nil {
		o.ErrorLog = errorLog{log}
	}
	return promhttp.HandlerFor(reg, o)
}

// errorLog is promhttp's Logger on slog.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Println(v ...any) {
	e.log.Warn("metrics scrape incomplete: some series are left out", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}
