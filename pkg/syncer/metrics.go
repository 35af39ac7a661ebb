package syncer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

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
	return m
}
