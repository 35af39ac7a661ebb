package syncer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// decisionUnavailable: the request was not acknowledged (Redis did not
// answer, or the dsync was cut off): 503, the Broker redelivers it.
const decisionUnavailable change.Outcome = "unavailable"

type handlerMetrics struct {
	received  *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	decisions *prometheus.CounterVec
}

func newHandlerMetrics(reg prometheus.Registerer) *handlerMetrics {
	ns := metrics.Namespace
	m := &handlerMetrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncEventsReceived,
			Help: "CloudEvents received, by type (other for unknown types)."}, []string{"type"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncEventsRejected,
			Help: "Requests answered 4xx, by reason."}, []string{"reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncDecisions,
			Help: "Decisions per event (synced, covered, coalesced, excluded, failed, unavailable), by priority."},
			[]string{"decision", "priority"}),
	}
	reg.MustRegister(m.received, m.rejected, m.decisions)
	// Every decision starts at 0, so that increase() and the alerts see
	// the first "unavailable" of a process that has been running.
	for _, d := range []change.Outcome{change.Synced, change.Covered, change.Coalesced, change.Excluded, change.Failed, decisionUnavailable} {
		for _, p := range []change.Priority{change.High, change.Low} {
			m.decisions.WithLabelValues(string(d), string(p))
		}
	}
	return m
}
