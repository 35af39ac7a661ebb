// Package metrics is the one place for dovewarden's Prometheus metric names,
// and the registry every role serves at /metrics.
package metrics

import (
	"net/http"

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
	IngestSendSeconds      = "ingest_send_duration_seconds"
	IngestSendFailures     = "ingest_send_failures_total"
	IngestPendingMarks     = "ingest_pending_marks_total"
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

// Handler serves reg in the Prometheus exposition format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
