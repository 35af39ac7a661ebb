package replicator

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

type replMetrics struct {
	dsyncs     *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	lag        *prometheus.HistogramVec
	contention *prometheus.CounterVec
	coalesced  *prometheus.CounterVec
	reruns     prometheus.Counter
	leftOut    prometheus.Counter
	askedAgain *prometheus.CounterVec
	inProgress prometheus.Gauge
	config     *prometheus.CounterVec
}

func newReplMetrics(reg prometheus.Registerer) *replMetrics {
	ns := metrics.Namespace
	// dsync takes 20 ms for an unchanged mailbox and minutes for a first
	// full sync of a large one.
	durBuckets := []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
	lagBuckets := []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400}
	m := &replMetrics{
		dsyncs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncDsyncs,
			Help: "dsync attempts by outcome (success or failure class) and priority."}, []string{"outcome", "priority"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: metrics.SyncDsyncSeconds,
			Help: "Duration of dsync attempts, by priority.", Buckets: durBuckets}, []string{"priority"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: metrics.SyncLagSeconds,
			Help: "From the oldest change a successful dsync covered to its end, by priority.", Buckets: lagBuckets}, []string{"priority"}),
		contention: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncLockContention,
			Help: "Requests that found the user's lock held by a running dsync, by priority."}, []string{"priority"}),
		coalesced: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncCoalescedChanges,
			Help: "Changes acknowledged without a dsync of their own, by how (covered, merged)."}, []string{"how"}),
		reruns: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncReruns,
			Help: "dsyncs run again at once by the lock owner because changes arrived during its dsync."}),
		leftOut: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncStatesLeftOut,
			Help: "dsyncs run as full ones without the user's stored state, which the doveadm transport could not pass (too large: Dovecot 2.4's HTTP API takes 32 KiB, some 550 mailboxes), and states a dsync returned too large to keep (over 1 MiB), after which the next dsync is a full one."}),
		askedAgain: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncAskedAgain,
			Help: "Users whose changes kept arriving during --max-rounds dsyncs of one request, handed back to the Broker as a replication.requested, by result (sent; failed: left for the sweep)."}, []string{"result"}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: metrics.SyncInProgress,
			Help: "dsyncs this instance runs now."}),
		config: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.SyncConfigProblems,
			Help: "Failures an admin must fix (exit codes 77/78, rejected credentials, protocol errors), by class."}, []string{"class"}),
	}
	reg.MustRegister(m.dsyncs, m.duration, m.lag, m.contention, m.coalesced, m.reruns, m.leftOut, m.askedAgain, m.inProgress, m.config)
	// Every outcome from the start, at 0: increase() cannot see the first
	// value of a series, so a failure class first seen in a short-lived
	// instance (a Knative pod) would be missing from the error ratio.
	for _, class := range doveadm.Classes() {
		for _, p := range []change.Priority{change.High, change.Low} {
			m.dsyncs.WithLabelValues(class, string(p))
		}
	}
	return m
}
