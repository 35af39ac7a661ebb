package ingest

import (
	"maps"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// Reasons a request is rejected before any event is read from it (metric
// label values).
const (
	rejectMethod          = "method"
	rejectPath            = "path"
	rejectAuth            = "unauthorized"
	rejectContentType     = "content_type"
	rejectContentEncoding = "content_encoding"
	rejectTooLarge        = "too_large"
	rejectMalformed       = "malformed"
	rejectHost            = "bad_host"
	rejectInvalid         = "invalid_event"
	rejectUser            = "bad_user"
	rejectRead            = "read_error"
)

// maxHostLabels bounds the per-host label values: a client sending made-up
// hostnames must not grow memory without bound. Further hosts share
// otherHost.
const (
	maxHostLabels = 256
	otherHost     = "_other"
)

type ingestMetrics struct {
	received  *prometheus.CounterVec
	accepted  *prometheus.CounterVec
	dropped   *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	answer    *prometheus.HistogramVec
	sendTime  prometheus.Histogram
	sendFails *prometheus.CounterVec
	pending   *prometheus.CounterVec
	lost      *prometheus.CounterVec
	lastEvent *prometheus.GaugeVec

	observeFails prometheus.Counter

	// answers holds answer's series for the codes ingest answers with,
	// looked up once: ServeHTTP times every request.
	answers map[int]prometheus.Observer

	// hosts maps each host label to its metrics. It is replaced, never
	// changed, so events read it without a lock; mu serialises the
	// replacements and the making of other, the metrics of the hosts
	// past maxHostLabels, which events and Hosts read without it.
	hosts atomic.Pointer[map[string]*hostMetrics]
	mu    sync.Mutex
	other atomic.Pointer[hostMetrics]
}

// hostMetrics are the series of one host label that every event of the
// host updates, looked up once.
type hostMetrics struct {
	label     string
	received  prometheus.Counter
	lastEvent prometheus.Gauge

	// events and last (Unix nanoseconds) are what Hosts reports;
	// announced is set by the first event, which is logged.
	events    atomic.Int64
	last      atomic.Int64
	announced atomic.Bool
}

// seen counts an event of the host, and reports whether it is the host's
// first since the start.
func (hm *hostMetrics) seen(now time.Time) (first bool) {
	hm.received.Inc()
	hm.lastEvent.Set(float64(now.UnixNano()) / 1e9)
	hm.events.Add(1)
	hm.last.Store(now.UnixNano())
	return !hm.announced.Load() && hm.announced.CompareAndSwap(false, true)
}

// HostSeen is what ingest received from one Dovecot host since it
// started: the host as events name it (the exporter URL's ?host=NAME
// when given), how many events, and when the last came. Once 256 hosts
// are known, further ones are counted together as "_other".
type HostSeen struct {
	Host   string    `json:"host"`
	Events int64     `json:"events"`
	Last   time.Time `json:"last"`
}

// hostsSeen lists every host an event came from, by name.
func (m *ingestMetrics) hostsSeen() []HostSeen {
	hosts := *m.hosts.Load()
	all := make([]*hostMetrics, 0, len(hosts)+1)
	for _, hm := range hosts {
		all = append(all, hm)
	}
	if o := m.other.Load(); o != nil {
		all = append(all, o)
	}
	out := make([]HostSeen, 0, len(all))
	for _, hm := range all {
		if n := hm.events.Load(); n > 0 {
			out = append(out, HostSeen{Host: hm.label, Events: n, Last: time.Unix(0, hm.last.Load()).UTC()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

func newIngestMetrics(reg prometheus.Registerer) *ingestMetrics {
	ns := metrics.Namespace
	m := &ingestMetrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestEventsReceived,
			Help: "Dovecot events received and parsed, by Dovecot host."}, []string{"host"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestEventsAccepted,
			Help: "Changes the Broker accepted, by Dovecot host and priority."}, []string{"host", "priority"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestEventsDropped,
			Help: "Well-formed events that change nothing, by Dovecot host and reason."}, []string{"host", "reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestRequestsRejected,
			Help: "Requests answered 4xx, by reason."}, []string{"reason"}),
		// Up to the largest send-budget, with detail below Dovecot's
		// exporter timeout (500 ms in the snippets).
		answer: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: metrics.IngestRequestSeconds,
			Help:    "Time from reading a request's headers to ingest's answer, by HTTP status code.",
			Buckets: []float64{.00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"code"}),
		sendTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: metrics.IngestSendSeconds,
			Help:    "Time to hand one change to the Broker, retries included.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .15, .25, .5}}),
		sendFails: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestSendFailures,
			Help: "Changes the Broker did not accept within the send budget (answered 503 to Dovecot), by Dovecot host."}, []string{"host"}),
		pending: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestPendingMarks,
			Help: "Users recorded in Redis for the sweep after a failed send, by result (ok, error)."}, []string{"result"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestChangesLost,
			Help: "Changes neither handed to the Broker nor recorded in Redis for the sweep (no Redis configured, or the mark failed), by Dovecot host: replicated only with the user's next change or full sync."}, []string{"host"}),
		lastEvent: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: metrics.IngestLastEvent,
			Help: "Unix time of the last event received from each Dovecot host."}, []string{"host"}),
		observeFails: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: metrics.IngestObserveFailures,
			Help: "Changes sent without the Redis-clock stamp because Redis did not answer in time, or had not in the second before (coalesced with the clock-skew margin instead)."}),
	}
	m.hosts.Store(&map[string]*hostMetrics{})
	m.answers = map[int]prometheus.Observer{}
	for _, code := range []int{http.StatusOK, http.StatusAccepted, http.StatusBadRequest, http.StatusUnauthorized,
		http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge,
		http.StatusUnsupportedMediaType, http.StatusServiceUnavailable} {
		m.answers[code] = m.answer.WithLabelValues(strconv.Itoa(code))
	}
	reg.MustRegister(m.received, m.accepted, m.dropped, m.rejected, m.answer, m.sendTime, m.sendFails, m.pending, m.lost, m.lastEvent, m.observeFails)
	return m
}

// answered is the request-duration series of code.
func (m *ingestMetrics) answered(code int) prometheus.Observer {
	if o, ok := m.answers[code]; ok {
		return o
	}
	return m.answer.WithLabelValues(strconv.Itoa(code))
}

// hostLabel returns host as a label value, or otherHost once maxHostLabels
// distinct hosts have been seen.
func (m *ingestMetrics) hostLabel(host string) string { return m.host(host).label }

// host returns the metrics of host, or those of otherHost once
// maxHostLabels distinct hosts have been seen. The event that first names
// a label counts it at once, so its series appear when they did before.
func (m *ingestMetrics) host(host string) *hostMetrics {
	hosts := *m.hosts.Load()
	if hm, ok := hosts[host]; ok {
		return hm
	}
	if o := m.other.Load(); o != nil && len(hosts) >= maxHostLabels {
		return o
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	hosts = *m.hosts.Load()
	if hm, ok := hosts[host]; ok {
		return hm
	}
	if len(hosts) < maxHostLabels {
		hm := m.newHostMetrics(host)
		next := make(map[string]*hostMetrics, len(hosts)+1)
		maps.Copy(next, hosts)
		next[host] = hm
		m.hosts.Store(&next)
		return hm
	}
	o := m.other.Load()
	if o == nil {
		o = m.newHostMetrics(otherHost)
		m.other.Store(o)
	}
	return o
}

func (m *ingestMetrics) newHostMetrics(label string) *hostMetrics {
	return &hostMetrics{
		label:     label,
		received:  m.received.WithLabelValues(label),
		lastEvent: m.lastEvent.WithLabelValues(label),
	}
}
