package sweep

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

type sweepMetrics struct {
	started      prometheus.Counter
	finished     *prometheus.CounterVec
	listed       *prometheus.CounterVec
	listFailures *prometheus.CounterVec
	examined     prometheus.Counter
	requested    *prometheus.CounterVec
	skipped      *prometheus.CounterVec
	batches      prometheus.Counter
	sendFailures prometheus.Counter
}

func newSweepMetrics(reg prometheus.Registerer) *sweepMetrics {
	ns := metrics.Namespace
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help})
	}
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help}, labels)
	}
	m := &sweepMetrics{
		started:      counter(metrics.SweepsStarted, "Sweeps started."),
		finished:     vec(metrics.SweepsFinished, "Sweeps ended, by outcome (completed; abandoned: its continuation was lost, or it started before the recovery time, and a later sweep replaced it; replaced: a retry sweep that a sweep listing every user replaced, or a sweep of dovewarden's own that an administrator's replaced).", "outcome"),
		listed:       vec(metrics.SweepUsersListed, "Usernames the Dovecot hosts listed, by host.", "host"),
		listFailures: vec(metrics.SweepListFailures, "User listings that failed or were cut short, by host.", "host"),
		examined:     counter(metrics.SweepUsersExamined, "Sweep candidates examined."),
		requested:    vec(metrics.SweepUsersRequested, "replication.requested events the sweep sent, by reason.", "reason"),
		skipped:      vec(metrics.SweepUsersSkipped, "Sweep candidates not requested, by reason.", "reason"),
		batches:      counter(metrics.SweepBatches, "Sweep batches done."),
		sendFailures: counter(metrics.SweepSendFailures, "replication.requested events the Broker did not take."),
	}
	reg.MustRegister(m.started, m.finished, m.listed, m.listFailures, m.examined, m.requested, m.skipped, m.batches, m.sendFailures)
	// Known label values start at zero, so rate() and alerts see them.
	m.finished.WithLabelValues("completed")
	m.finished.WithLabelValues("abandoned")
	m.finished.WithLabelValues("replaced")
	for _, r := range []Reason{ReasonPending, ReasonFailed, ReasonRecovery, ReasonStale, ReasonNever} {
		m.requested.WithLabelValues(string(r))
	}
	for _, r := range []string{SkipBadUser, SkipExcluded, SkipInProgress, SkipRetryNotDue} {
		m.skipped.WithLabelValues(r)
	}
	return m
}

// StatusReader reads the sweep's progress; *state.Store is one.
type StatusReader interface {
	SweepStatus(ctx context.Context) (state.SweepStatus, error)
}

// statusCollector reads the sweep's progress from Redis at scrape time, so
// every instance reports the same, current values whichever ran the sweep.
type statusCollector struct {
	r                                   StatusReader
	lastStart, lastEnd, running, pos, n *prometheus.Desc
}

// NewStatusCollector returns the collector of the sweep gauges: the last
// completed sweep's start and end, whether one runs, and its progress.
func NewStatusCollector(r StatusReader) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, "", name), help, nil, nil)
	}
	return &statusCollector{r: r,
		lastStart: d(metrics.SweepLastStart, "Start of the last completed sweep (Unix seconds; 0: none yet)."),
		lastEnd:   d(metrics.SweepLastEnd, "End of the last completed sweep (Unix seconds; 0: none yet)."),
		running:   d(metrics.SweepRunning, "1 while a sweep runs."),
		pos:       d(metrics.SweepPosition, "Candidates the running or last sweep has examined."),
		n:         d(metrics.SweepCandidates, "Candidates of the running or last sweep (-1 while it lists users)."),
	}
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lastStart, c.lastEnd, c.running, c.pos, c.n} {
		ch <- d
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := c.r.SweepStatus(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.lastEnd, err)
		return
	}
	secs := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixMilli()) / 1000
	}
	running := 0.0
	if st.Running {
		running = 1
	}
	ch <- prometheus.MustNewConstMetric(c.lastStart, prometheus.GaugeValue, secs(st.LastCompletedStart))
	ch <- prometheus.MustNewConstMetric(c.lastEnd, prometheus.GaugeValue, secs(st.LastCompletedEnd))
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, running)
	ch <- prometheus.MustNewConstMetric(c.pos, prometheus.GaugeValue, float64(st.Offset))
	ch <- prometheus.MustNewConstMetric(c.n, prometheus.GaugeValue, float64(st.Total))
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

// EvictionReader is what the Redis collector reads; *state.Store
// implements it.
type EvictionReader interface {
	MayEvict(ctx context.Context) (evict, ok bool)
}

// ClientCertReader is what the Redis collector reads of a client
// certificate, when its EvictionReader has one; *state.Store implements
// it.
type ClientCertReader interface {
	ClientCertificateExpiry() (time.Time, bool)
}

// redisCollector reads the Redis server's eviction setting at each
// scrape: the warning at start misses a change made later (CONFIG SET, a
// managed Redis), and an alert needs a series. Ingest registers it too,
// as the other gauges read from Redis: it runs all the time, where the
// sync function scales to zero. It also reads the client certificate
// presented to Redis: a new connection with an expired one is refused.
type redisCollector struct {
	r           EvictionReader
	evict, cert *prometheus.Desc
}

// NewRedisCollector returns the collector of dovewarden_redis_may_evict:
// 1 while the server may evict dovewarden's keys, 0 when it may not, and
// no sample when it does not say (INFO refused, Redis down); and of
// dovewarden_redis_client_certificate_expiry_timestamp_seconds, when r
// presents a client certificate (a ClientCertReader that says so),
// whether or not Redis answers.
func NewRedisCollector(r EvictionReader) prometheus.Collector {
	return &redisCollector{r: r,
		evict: prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, "", metrics.RedisMayEvict),
			"1 while the Redis server may evict dovewarden's keys when it is full (a maxmemory with a maxmemory-policy other than noeviction), read at each scrape.",
			nil, nil),
		cert: prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, "", metrics.RedisClientCertExpiry),
			"When the client certificate presented to Redis (redis-cert-file, read at each scrape and each new connection) expires, as a Unix time.",
			nil, nil)}
}

func (c *redisCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.evict; ch <- c.cert }

func (c *redisCollector) Collect(ch chan<- prometheus.Metric) {
	if cr, ok := c.r.(ClientCertReader); ok {
		if t, ok := cr.ClientCertificateExpiry(); ok {
			ch <- prometheus.MustNewConstMetric(c.cert, prometheus.GaugeValue, float64(t.Unix()))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	evict, ok := c.r.MayEvict(ctx)
	if !ok {
		return
	}
	v := 0.0
	if evict {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.evict, prometheus.GaugeValue, v)
}
