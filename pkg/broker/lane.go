package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
)

// maxErrorData is Knative's limit on knativeerrordata
// (kncloudevents/attributes.KnativeErrorDataExtensionMaxLength).
const maxErrorData = 1024

// phase is where a task is in Knative's dispatch: deliver to the
// subscriber, publish its reply, or deliver to the dead-letter sink. Each
// phase retries on its own with the Trigger's delivery settings, as
// Knative's dispatcher does.
type phase int

const (
	phaseDeliver phase = iota
	phaseReply
	phaseDeadLetter
)

// task is one event on its way through one Trigger.
type task struct {
	ev      cloudevents.Event // as the subscriber gets it (no TTL)
	ttl     int32
	phase   phase
	attempt int // retries made in this phase
	reply   *cloudevents.Event
	dead    cloudevents.Event // the event for the dead-letter sink
	// hdr are the pass-through headers the phase sends: those that came
	// with the event (deliver), then those of the subscriber's response
	// (reply, and a dead-letter delivery after a reply failed), as
	// Knative's dispatcher sends them. Shared, never changed.
	hdr http.Header
	// ns is the Trigger's namespace as the event had it: Kn-Namespace.
	ns string
	// size is what the task counts against the lane's bytes.
	size int64
}

// eventSize is about what an event takes in memory: its data and
// attributes, and a fixed part for the rest.
func eventSize(ev cloudevents.Event) int64 {
	n := int64(len(ev.DataEncoded)) + 512
	for k, v := range ev.Extensions() {
		n += int64(len(k))
		if s, ok := v.(string); ok {
			n += int64(len(s))
		}
	}
	return n + int64(len(ev.ID())+len(ev.Source())+len(ev.Type())+len(ev.Subject()))
}

// lane is one Trigger's queue and workers. held counts every event the
// lane owns, queued, waiting for a retry or in delivery, and never exceeds
// capacity: a place is reserved when an event is published and freed when
// it is done with, so queue sends never block and memory stays bounded.
// Deliveries to the dead-letter sink have a queue and workers of their
// own (as many as the subscriber's), so a sink that hangs (an alert
// webhook) never takes the workers that deliver to the subscriber: bad
// input that goes to the sink never blocks the lane.
type lane struct {
	b        *Broker
	tr       *Trigger
	target   endpoint
	dls      endpoint // nil: none
	timeout  time.Duration
	workers  int
	capacity int64
	maxBytes int64
	queue    chan *task
	dlQueue  chan *task // dead-letter deliveries; nil without a sink
	log      *slog.Logger
	// dropLogs bounds the lines of replies dropped at a full queue.
	dropLogs *lograte.Limiter

	held     atomic.Int64
	bytes    atomic.Int64 // the sizes of the tasks held
	inFlight atomic.Int64

	mu       sync.Mutex
	timers   map[*task]*time.Timer
	stopping bool
	// running has a slot per worker (the subscriber's, then the
	// dead-letter sink's), guarded by the broker's heldMu.
	running []runSlot
}

// runSlot is the task a worker runs, as it was when the worker took it:
// what Shutdown hands back for a delivery it cannot wait for.
type runSlot struct {
	t *task
	h Held
}

// load is what the lane holds now: events waiting for a worker or a
// retry, and deliveries running.
func (l *lane) load() (queued, inFlight int64) {
	inFlight = l.inFlight.Load()
	queued = l.held.Load() - inFlight
	if queued < 0 {
		queued = 0 // the two counters are read at slightly different times
	}
	return queued, inFlight
}

// reserve takes a place for a task of size bytes, or says why there is
// none: the lane holds capacity tasks, or their sizes and this one's
// would pass maxBytes (unless the lane holds nothing).
func (l *lane) reserve(size int64) *QueueFullError {
	for {
		n := l.held.Load()
		if n >= l.capacity {
			return &QueueFullError{Trigger: l.tr.Name}
		}
		if l.held.CompareAndSwap(n, n+1) {
			break
		}
	}
	if b := l.bytes.Add(size); b > l.maxBytes && b != size {
		l.bytes.Add(-size)
		l.held.Add(-1)
		return &QueueFullError{Trigger: l.tr.Name, Bytes: true}
	}
	return nil
}

// unreserve gives back a place reserve took.
func (l *lane) unreserve(size int64) {
	l.bytes.Add(-size)
	l.held.Add(-1)
}

// enqueue puts t in the queue of its phase; the place is reserved, so it
// never blocks.
func (l *lane) enqueue(t *task) {
	if t.phase == phaseDeadLetter {
		l.dlQueue <- t
		return
	}
	l.queue <- t
}

func (l *lane) work(slot *runSlot, queue <-chan *task) {
	defer l.b.wg.Done()
	for {
		select {
		case <-l.b.quit:
			return
		case t := <-queue:
			select {
			case <-l.b.quit:
				// Shutdown may have drained the queue already: hand it
				// back here rather than queue it again.
				l.dropForShutdown(t)
				return
			default:
			}
			l.inFlight.Add(1)
			l.b.heldMu.Lock()
			*slot = runSlot{t, t.held(l.tr.Name)}
			l.b.heldMu.Unlock()
			l.run(t)
			l.b.heldMu.Lock()
			*slot = runSlot{}
			l.b.heldMu.Unlock()
			l.inFlight.Add(-1)
		}
	}
}

func (l *lane) run(t *task) {
	switch t.phase {
	case phaseDeliver:
		l.deliver(t)
	case phaseReply:
		l.sendReply(t)
	case phaseDeadLetter:
		l.deadLetter(t)
	}
}

// attempt sends ev once. Only the subscriber gets the Trigger's
// delivery.format: on a cluster the Trigger's Subscription delivers to the
// broker filter, which sends to the subscriber in that format
// (filter.Handler.handleDispatchToSubscriberRequest, WithEventFormat), but
// the channel dispatcher sends to the dead-letter sink itself, with no
// format option (fanout.FanoutEventHandler.makeFanoutRequest), so the
// sink gets binary mode whatever the format.
// The request carries the task's pass-through headers and Kn-Namespace,
// to the subscriber as to the sink.
func (l *lane) attempt(ep endpoint, ev cloudevents.Event, to hop, t *task) outcome {
	ctx, cancel := context.WithTimeout(l.b.ctx, l.timeout)
	defer cancel()
	return ep.send(ctx, ev, l.tr.Delivery.Structured && to == toSubscriber, to, outgoing(t.hdr, t.ns))
}

func (l *lane) deliver(t *task) {
	start := time.Now()
	o := l.attempt(l.target, t.ev, toSubscriber, t)
	l.b.m.latency.WithLabelValues(l.tr.Name).Observe(time.Since(start).Seconds())
	switch {
	case o.ok():
		l.b.m.deliveries.WithLabelValues(l.tr.Name, outcomeSuccess).Inc()
		if o.replyTooLarge {
			// As sendReply gives up on a reply the ingress refuses: the
			// original event goes to the dead-letter sink with the
			// reply's headers, and the subscriber is not asked again.
			t.hdr = o.replyHdr
			ro := outcome{code: http.StatusRequestEntityTooLarge, body: []byte(o.reason), reason: "publish reply: " + o.reason}
			l.log.Debug("reply not published", "id", t.ev.ID(), "err", o.reason)
			l.giveUp(t, l.b.ingressDest(), ro)
			return
		}
		if o.reply == nil {
			l.done(t)
			return
		}
		t.reply, t.phase, t.attempt, t.hdr = o.reply, phaseReply, 0, o.replyHdr
		l.sendReply(t)
		return
	case o.retriable():
		l.b.m.deliveries.WithLabelValues(l.tr.Name, outcomeRetriable).Inc()
	default:
		l.b.m.deliveries.WithLabelValues(l.tr.Name, outcomeNonRetriable).Inc()
	}
	if l.stopped() {
		l.dropForShutdown(t)
		return
	}
	l.log.Debug("delivery failed", "id", t.ev.ID(), "type", t.ev.Type(), "subject", t.ev.Subject(),
		"dest", l.target.dest(), "code", o.code, "reason", o.reason, "retry", t.attempt)
	if l.retry(t, o) {
		return
	}
	l.giveUp(t, l.target.dest(), o)
}

// sendReply publishes a subscriber's reply back into the broker, where the
// Triggers route it like any event. A full lane does not refuse it (it
// loses the reply, counted: publish); a reply the ingress would refuse
// (invalid, TTL used up) sends the original event to the dead-letter
// sink, as Knative does.
func (l *lane) sendReply(t *task) {
	// Into the Broker of the Trigger: the same namespace.
	err := l.b.publish(*t.reply, sourceReply, &t.ttl, t.hdr, t.ns, false)
	if err == nil {
		l.b.m.replies.WithLabelValues(l.tr.Name).Inc()
		l.done(t)
		return
	}
	if errors.Is(err, ErrClosed) {
		l.dropForShutdown(t)
		return
	}
	code := http.StatusServiceUnavailable // not expected: retried
	if errors.Is(err, ErrInvalidEvent) || errors.Is(err, ErrTTLExhausted) {
		code = http.StatusBadRequest // what Knative's ingress answers: not retried
	}
	o := outcome{code: code, body: []byte(err.Error()), reason: "publish reply: " + err.Error()}
	l.log.Debug("reply not published", "id", t.ev.ID(), "reply", t.reply.ID(), "replyType", t.reply.Type(), "err", err, "retry", t.attempt)
	if l.retry(t, o) {
		return
	}
	l.giveUp(t, l.b.ingressDest(), o)
}

// giveUp sends the event to the dead-letter sink with the knativeerror*
// extensions describing the last attempt, or drops it when there is none.
func (l *lane) giveUp(t *task, dest string, o outcome) {
	if l.dls == nil {
		l.b.m.dropped.WithLabelValues(l.tr.Name, dropNoDLS).Inc()
		l.log.Warn("event dropped: delivery failed and the Trigger has no dead-letter sink",
			"id", t.ev.ID(), "type", t.ev.Type(), "subject", t.ev.Subject(), "dest", dest, "code", o.code, "reason", o.reason, "retries", t.attempt)
		l.done(t)
		return
	}
	dead := t.ev.Clone()
	// The task is charged for one event's data (size), and from here on
	// the sink gets dead, Shutdown hands back dead, and the original is
	// read for its attributes only (the log): its data would be a second
	// copy held while the sink's retries wait.
	t.ev.DataEncoded = nil
	data := base64.StdEncoding.EncodeToString(o.body)
	if len(data) > maxErrorData {
		data = data[:maxErrorData]
	}
	// Strings, as the extensions reach an HTTP dead-letter sink.
	dead.SetExtension(ExtErrorDest, dest)
	dead.SetExtension(ExtErrorCode, strconv.Itoa(o.code))
	dead.SetExtension(ExtErrorData, data)
	// Knative's dead-letter sink gets the event as the channel held it,
	// TTL included.
	dead.SetExtension(ExtTTL, strconv.Itoa(int(t.ttl)))
	t.dead, t.phase, t.attempt = dead, phaseDeadLetter, 0
	// To the sink's own workers: this one goes back to the subscriber's
	// events.
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopping {
		l.dropForShutdown(t)
		return
	}
	l.enqueue(t)
}

func (l *lane) deadLetter(t *task) {
	o := l.attempt(l.dls, t.dead, toDeadLetterSink, t)
	if o.ok() {
		// Any 2xx: the sink's body, a reply or not, is discarded, as in
		// Knative.
		l.b.m.deadLettered.WithLabelValues(l.tr.Name).Inc()
		l.log.Warn("event sent to the dead-letter sink", "id", t.ev.ID(), "type", t.ev.Type(), "subject", t.ev.Subject(),
			"deadLetterSink", l.dls.dest(), "code", t.dead.Extensions()[ExtErrorCode])
		l.done(t)
		return
	}
	if l.stopped() {
		l.dropForShutdown(t)
		return
	}
	if l.retry(t, o) {
		return
	}
	l.b.m.dropped.WithLabelValues(l.tr.Name, dropDLSFailed).Inc()
	l.log.Error("event dropped: the dead-letter sink failed too", "id", t.ev.ID(), "type", t.ev.Type(),
		"subject", t.ev.Subject(), "deadLetterSink", l.dls.dest(), "code", o.code, "reason", o.reason)
	l.done(t)
}

// retry schedules the task's phase again after the Trigger's backoff, if
// the failure is retriable and retries are left. It never sleeps in the
// worker: a timer puts the task back in the queue (its place is still
// reserved), so the worker moves on to the next event.
func (l *lane) retry(t *task, o outcome) bool {
	if !o.retriable() || t.attempt >= l.tr.Delivery.Retry {
		return false
	}
	t.attempt++
	wait := l.tr.Delivery.Backoff(t.attempt)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopping {
		l.dropForShutdown(t)
		return true
	}
	l.b.m.retries.WithLabelValues(l.tr.Name).Inc()
	if wait <= 0 {
		l.enqueue(t)
		return true
	}
	l.timers[t] = time.AfterFunc(wait, func() { l.fire(t) })
	return true
}

func (l *lane) fire(t *task) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.timers[t]; !ok {
		return // stopped: counted by stop
	}
	delete(l.timers, t)
	l.enqueue(t)
}

// stopped: Shutdown cancelled the attempts in flight. An attempt that
// failed then failed for that, not for its destination: it is neither
// retried nor given up on, but handed back by Shutdown.
func (l *lane) stopped() bool { return l.b.ctx.Err() != nil }

// done frees the task's place in the lane.
func (l *lane) done(t *task) { l.unreserve(t.size) }

// dropForShutdown counts t as dropped by Shutdown and keeps what was left
// to do with it for Shutdown's answer, unless Shutdown has answered: t's
// delivery then outlasted it and was handed back already.
func (l *lane) dropForShutdown(t *task) {
	l.b.heldMu.Lock()
	handed := false
	if !l.b.heldDone {
		l.b.m.dropped.WithLabelValues(l.tr.Name, dropShutdown).Inc()
		l.b.shutdownDrops.Add(1)
		l.b.held = append(l.b.held, t.held(l.tr.Name))
		// Handed back now: not again as a delivery still running.
		for i := range l.running {
			if l.running[i].t == t {
				l.running[i] = runSlot{}
			}
		}
		handed = true
	} else {
		handed = l.b.handedBack[t]
	}
	l.b.heldMu.Unlock()
	if !handed {
		// A worker that took t from the queue as Shutdown answered, and
		// had not recorded it yet: nothing holds it now.
		l.log.Error("event lost at shutdown: taken for delivery after the broker had handed back what it held",
			"id", t.ev.ID(), "type", t.ev.Type(), "subject", t.ev.Subject())
	}
	l.done(t)
}

// handBackRunning adds the deliveries still running to Shutdown's answer,
// as they were when their worker took them, and counts them; heldMu is
// held.
func (l *lane) handBackRunning() (n int) {
	for i := range l.running {
		if l.running[i].t == nil {
			continue
		}
		l.b.m.dropped.WithLabelValues(l.tr.Name, dropShutdown).Inc()
		l.b.shutdownDrops.Add(1)
		l.b.held = append(l.b.held, l.running[i].h)
		l.b.handedBack[l.running[i].t] = true
		l.running[i] = runSlot{}
		n++
	}
	return n
}

// stop drops the events waiting for a retry; from now on a failed attempt
// is not retried.
func (l *lane) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopping = true
	for t, tm := range l.timers {
		tm.Stop()
		delete(l.timers, t)
		l.dropForShutdown(t)
	}
}

// drain drops the events still queued once the workers are gone.
func (l *lane) drain() {
	for {
		select {
		case t := <-l.queue:
			l.dropForShutdown(t)
		case t := <-l.dlQueue: // a nil channel: never
			l.dropForShutdown(t)
		default:
			return
		}
	}
}
