package syncer

import (
	"context"
	"time"

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

// Counter counts pending and failed users in the shared state.
type Counter interface {
	Counts(ctx context.Context) (pending, failed int64, err error)
}

// usersCollector reads the pending and failing user counts from Redis at
// scrape time, so every instance reports the same, current numbers.
type usersCollector struct {
	c                Counter
	pending, failing *prometheus.Desc
}

// NewUsersCollector returns the collector of the pending and failing users
// gauges.
func NewUsersCollector(c Counter) prometheus.Collector {
	ns := metrics.Namespace
	return &usersCollector{c: c,
		pending: prometheus.NewDesc(prometheus.BuildFQName(ns, "", metrics.SyncPendingUsers),
			"Users with changes not yet covered by a successful dsync.", nil, nil),
		failing: prometheus.NewDesc(prometheus.BuildFQName(ns, "", metrics.SyncFailingUsers),
			"Users whose last replication failed after its last attempt.", nil, nil),
	}
}

func (u *usersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- u.pending; ch <- u.failing }

func (u *usersCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p, f, err := u.c.Counts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(u.pending, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(u.pending, prometheus.GaugeValue, float64(p))
	ch <- prometheus.MustNewConstMetric(u.failing, prometheus.GaugeValue, float64(f))
}
