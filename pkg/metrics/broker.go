package metrics

// Embedded broker metric names (without the namespace).
const (
	// BrokerEventsPublished counts events the broker accepted (queued for
	// every matching Trigger, or matching none), by how they came in
	// (ingress: HTTP or in-process publish; reply: a subscriber's reply).
	BrokerEventsPublished = "broker_events_published_total"
	// BrokerEventsRejected counts events refused because a matching
	// Trigger's queue was full (answered 503), by that Trigger.
	BrokerEventsRejected = "broker_events_rejected_total"
	// BrokerIngressRefused counts requests the HTTP ingress refused as bad
	// input, by reason (not_cloudevent, invalid_event, ttl_exhausted,
	// too_large, no_broker, method).
	BrokerIngressRefused = "broker_ingress_refused_total"
	// BrokerDeliveries counts delivery attempts to subscribers, by Trigger
	// and outcome (success, retriable, non_retriable).
	BrokerDeliveries = "broker_deliveries_total"
	// BrokerRetries counts retries scheduled, by Trigger.
	BrokerRetries = "broker_retries_total"
	// BrokerDeadLettered counts events delivered to a dead-letter sink, by
	// Trigger.
	BrokerDeadLettered = "broker_dead_lettered_total"
	// BrokerDropped counts events given up on, by Trigger and reason
	// (no_dead_letter_sink, dead_letter_failed, shutdown, queue_full).
	BrokerDropped = "broker_events_dropped_total"
	// BrokerReplies counts subscriber replies published back into the
	// broker, by the Trigger whose subscriber replied.
	BrokerReplies = "broker_replies_total"
	// BrokerQueueDepth is the number of events a Trigger's lane holds that
	// are not being delivered right now (waiting for a worker or a retry).
	BrokerQueueDepth = "broker_queue_depth"
	// BrokerInFlight is the number of deliveries running now, by Trigger.
	BrokerInFlight = "broker_deliveries_in_flight"
	// BrokerDeliverySeconds is the duration of delivery attempts, by
	// Trigger.
	BrokerDeliverySeconds = "broker_delivery_duration_seconds"
	// BrokerSpooled counts events of the spool file, by outcome (saved,
	// not_saved, restored, not_restored, invalid).
	BrokerSpooled = "broker_spool_events_total"
)
