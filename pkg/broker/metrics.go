package broker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// Delivery outcomes (metric label values).
const (
	outcomeSuccess      = "success"
	outcomeRetriable    = "retriable"
	outcomeNonRetriable = "non_retriable"
)

// What became of events of the spool file (metric label values).
const (
	spoolSaved       = "saved"
	spoolNotSaved    = "not_saved"
	spoolRestored    = "restored"
	spoolNotRestored = "not_restored"
	spoolInvalid     = "invalid"
)

// Reasons an event is given up on (metric label values).
const (
	dropNoDLS      = "no_dead_letter_sink"
	dropDLSFailed  = "dead_letter_failed"
	dropShutdown   = "shutdown"
	dropQueueFull  = "queue_full"
	sourceIngress  = "ingress"
	sourceReply    = "reply"
	sourceRestored = "spool"
	retryAfterSecs = "1"
)

type brokerMetrics struct {
	published    *prometheus.CounterVec
	rejected     *prometheus.CounterVec
	refused      *prometheus.CounterVec
	deliveries   *prometheus.CounterVec
	retries      *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	replies      *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	spooled      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *brokerMetrics {
	ns := metrics.Namespace
	m := &brokerMetrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerEventsPublished,
			Help: "Events the embedded broker accepted, by source (ingress, reply, spool)."}, []string{"source"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerEventsRejected,
			Help: "Events refused because this Trigger's queue was full (answered 503; a reply is dropped for it instead)."}, []string{"trigger"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerIngressRefused,
			Help: "Requests the HTTP ingress refused as bad input, by reason (not_cloudevent, invalid_event, ttl_exhausted, too_large, no_broker, method)."}, []string{"reason"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerDeliveries,
			Help: "Delivery attempts to subscribers, by Trigger and outcome (success, retriable, non_retriable)."}, []string{"trigger", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerRetries,
			Help: "Retries scheduled (of deliveries, replies and dead-letter deliveries), by Trigger."}, []string{"trigger"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerDeadLettered,
			Help: "Events delivered to the dead-letter sink, by Trigger."}, []string{"trigger"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerDropped,
			Help: "Events given up on, by Trigger and reason (no_dead_letter_sink, dead_letter_failed, shutdown, queue_full)."}, []string{"trigger", "reason"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerReplies,
			Help: "Subscriber replies sent back into the broker, by the Trigger whose subscriber replied (also those every matching full queue dropped, which events_published_total leaves out)."}, []string{"trigger"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: metrics.BrokerDeliverySeconds,
			Help: "Duration of delivery attempts to subscribers, by Trigger.",
			// From an in-process no-op to a first full dsync of a big mailbox.
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}, []string{"trigger"}),
	}
	m.spooled = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: metrics.BrokerSpooled,
		Help: "Events of the spool file (--spool-file), by outcome: saved at a stop; not_saved (that the file format cannot hold, left out at a stop); restored at a start; not_restored (their Trigger gone or full); invalid (lines that are not held events)."}, []string{"outcome"})
	reg.MustRegister(m.published, m.rejected, m.refused, m.deliveries, m.retries, m.deadLettered, m.dropped, m.replies, m.latency, m.spooled)
	return m
}

// laneCollector reports each lane's depth and deliveries in flight from
// its counters at scrape time, so no code path has to keep a gauge right.
type laneCollector struct {
	lanes           []*lane
	depth, inFlight *prometheus.Desc
}

func newLaneCollector(lanes []*lane) *laneCollector {
	ns := metrics.Namespace
	return &laneCollector{
		lanes: lanes,
		depth: prometheus.NewDesc(prometheus.BuildFQName(ns, "", metrics.BrokerQueueDepth),
			"Events a Trigger's lane holds that are not being delivered now (waiting for a worker or a retry).", []string{"trigger"}, nil),
		inFlight: prometheus.NewDesc(prometheus.BuildFQName(ns, "", metrics.BrokerInFlight),
			"Deliveries running now, by Trigger.", []string{"trigger"}, nil),
	}
}

func (c *laneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.depth
	ch <- c.inFlight
}

func (c *laneCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.lanes {
		depth, inFlight := l.load()
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(depth), l.tr.Name)
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(inFlight), l.tr.Name)
	}
}
