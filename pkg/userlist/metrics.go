package userlist

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// LoadMetrics counts the loads of an excluded-users file and the users it
// held at the last one that succeeded.
type LoadMetrics struct {
	users prometheus.Gauge
	loads *prometheus.CounterVec
}

// NewLoadMetrics registers the metrics with reg. Both outcomes are there
// from the start, at 0, so that an alert on errors has a series to watch.
func NewLoadMetrics(reg prometheus.Registerer) *LoadMetrics {
	m := &LoadMetrics{
		users: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: metrics.ExcludedUsers,
			Help: "Users in the excluded-users file as last loaded into Redis's excluded set."}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: metrics.ExcludedUsersLoads,
			Help: "Loads of the excluded-users file (at start and on SIGHUP), by outcome (success, error)."}, []string{"outcome"}),
	}
	m.loads.WithLabelValues("success")
	m.loads.WithLabelValues("error")
	reg.MustRegister(m.users, m.loads)
	return m
}

// Loaded records a load that made the set n users.
func (m *LoadMetrics) Loaded(n int) {
	m.loads.WithLabelValues("success").Inc()
	m.users.Set(float64(n))
}

// Failed records a load that changed nothing.
func (m *LoadMetrics) Failed() { m.loads.WithLabelValues("error").Inc() }
