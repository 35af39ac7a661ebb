// Package broker is the embedded broker: a local stand-in for a Knative
// Broker that routes CloudEvents with the project's real Trigger manifests
// (config/broker) and Knative's semantics (filters, overlapping Triggers
// delivering twice, retries with backoff, dead-letter sinks with the
// knativeerror* extensions, replies published back into the broker), to
// in-process handlers or HTTP subscribers.
//
// Each Trigger is a lane with its own bounded queue and workers, so a
// backlog on one Trigger never delays another. It is not durable (what the
// lanes hold when the process ends is lost, unless the caller saves what
// Shutdown returns in a spool file for RestoreSpool; a crash loses it) and
// not distributed: for scale and durability run Knative with a Kafka
// Broker.
package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
)

// Defaults for Options left zero.
const (
	DefaultQueueSize = 10000
	DefaultWorkers   = 4
	// DefaultDeliveryTimeout is Knative Serving's default request timeout
	// (timeoutSeconds 300): what a subscriber Service would allow.
	DefaultDeliveryTimeout = 5 * time.Minute
	DefaultMaxBody         = 4 << 20
	// DefaultQueueBytes bounds the events one Trigger's lane holds, by
	// their size: 64 MiB, some 50,000 of dovewarden's own events (about
	// 1.2 KB each), so the event count bounds those, but 16 events of the
	// ingress's largest.
	DefaultQueueBytes = 64 << 20
)

// Extensions the broker sets, with Knative's names.
const (
	// ExtTTL counts how many more times an event may pass through the
	// broker as a reply (knative.dev/eventing/pkg/broker.TTLAttribute).
	ExtTTL = "knativebrokerttl"
	// ExtArrivalTime is when the broker accepted the event.
	ExtArrivalTime = "knativearrivaltime"
	// ExtErrorDest, ExtErrorCode and ExtErrorData describe the last
	// failed attempt on an event sent to a dead-letter sink: the
	// destination, the HTTP status, and the response body in base64 (at
	// most 1024 characters).
	ExtErrorDest = "knativeerrordest"
	ExtErrorCode = "knativeerrorcode"
	ExtErrorData = "knativeerrordata"
	// DefaultTTL is the TTL Knative's broker ingress gives new events.
	DefaultTTL = 255
)

// Errors Publish returns; the ingress maps them to HTTP statuses.
var (
	// ErrQueueFull: a matching Trigger's queue is full (503); nothing was
	// queued. The error is a *QueueFullError naming the Trigger.
	ErrQueueFull = errors.New("queue full")
	// ErrClosed: the broker is shutting down (503).
	ErrClosed = errors.New("broker shut down")
	// ErrInvalidEvent: not a valid CloudEvent, or one with an attribute
	// no HTTP header can carry, which a Knative Broker cannot forward
	// (400).
	ErrInvalidEvent = errors.New("invalid CloudEvent")
	// ErrTTLExhausted: the event has been replied through the broker too
	// many times (400, as Knative answers); a reply loop ends here.
	ErrTTLExhausted = errors.New("event TTL exhausted (" + ExtTTL + " reached 0): a reply loop?")
)

// QueueFullError says which Trigger's queue was full, by its count of
// events or (Bytes) by their size.
type QueueFullError struct {
	Trigger string
	Bytes   bool
}

func (e *QueueFullError) Error() string {
	if e.Bytes {
		return fmt.Sprintf("queue of Trigger %s is full (the size of the events it holds)", e.Trigger)
	}
	return fmt.Sprintf("queue of Trigger %s is full", e.Trigger)
}

// Is makes errors.Is(err, ErrQueueFull) true.
func (e *QueueFullError) Is(target error) bool { return target == ErrQueueFull }

// Options configure a Broker.
type Options struct {
	// Handlers are in-process subscribers, by the name a Trigger's
	// subscriber (or dead-letter sink) ref gives, e.g.
	// "dovewarden-sync-high".
	Handlers map[string]Handler
	// Subscribers map ref names to URLs events are POSTed to. They win
	// over Handlers of the same name.
	Subscribers map[string]string
	// QueueSize is each Trigger's queue (default DefaultQueueSize); the
	// dovewarden.org/queue-size annotation overrides it per Trigger.
	QueueSize int
	// QueueBytes bounds what each Trigger's queue holds by the size of
	// its events (default DefaultQueueBytes): a queue that would go past
	// it refuses the event, as a full one does. A queue holding nothing
	// takes any event the ingress took.
	QueueBytes int64
	// Workers deliver each Trigger's events in parallel (default
	// DefaultWorkers); the dovewarden.org/workers annotation overrides it.
	Workers int
	// DeliveryTimeout bounds each attempt when a Trigger's delivery sets
	// no timeout (default DefaultDeliveryTimeout).
	DeliveryTimeout time.Duration
	// MaxBody is the largest event the ingress accepts and the largest
	// reply read from a subscriber (default DefaultMaxBody); a larger
	// reply is refused as the ingress refuses it (413, not retried).
	MaxBody int64
	// Namespace is the namespace the broker and its Triggers stand in:
	// a subscriber gets it in the Kn-Namespace header for events published
	// in-process or POSTed at "/" (and their replies); an event POSTed at
	// /<namespace>/<broker> has that namespace. Default DefaultNamespace.
	Namespace string
	// Client sends to HTTP subscribers; nil means a client of its own.
	Client *http.Client
	// Logger gets the broker's logs; nil discards them.
	Logger *slog.Logger
	// Registerer gets the broker's metrics; nil keeps them private.
	Registerer prometheus.Registerer
}

// LaneInfo describes one Trigger's lane.
type LaneInfo struct {
	Trigger string
	// Enabled is false when the subscriber resolves to nothing here.
	Enabled bool
	// Subscriber and DeadLetterSink are where events go ("inprocess://"
	// for a Handler, else a URL); empty when not resolved.
	Subscriber, DeadLetterSink string
	Workers, QueueSize         int
	// Queued and InFlight are what an enabled lane holds when Lanes is
	// called: events waiting for a worker or a retry, and deliveries
	// running.
	Queued, InFlight int64
}

// Broker is the embedded broker. Make one with New and stop it with
// Shutdown.
type Broker struct {
	name  string
	opts  Options
	log   *slog.Logger
	m     *brokerMetrics
	lanes []*lane
	info  []LaneInfo
	// tlsClients are the HTTP clients of destinations with CACerts, by
	// CACerts; made in New, read-only after.
	tlsClients map[string]*http.Client

	mu     sync.RWMutex // held for writing only to close
	closed bool

	ctx    context.Context // parent of every delivery attempt
	cancel context.CancelFunc
	quit   chan struct{}
	wg     sync.WaitGroup

	shutdownDrops atomic.Int64
	// held is what the lanes held when Shutdown stopped them. Once
	// Shutdown has returned it (heldDone), a delivery still running hands
	// nothing more back: Shutdown handed it back as it began.
	heldMu   sync.Mutex
	held     []Held
	heldDone bool
	// handedBack are the deliveries Shutdown handed back while they ran.
	handedBack map[*task]bool
}

// New starts a broker for cfg: a lane per Trigger whose subscriber
// resolves (a Trigger whose subscriber does not is disabled with a
// warning; so is a dead-letter sink that does not resolve).
func New(cfg *Config, o Options) (*Broker, error) {
	if cfg == nil {
		return nil, errors.New("broker: no config")
	}
	o = withDefaults(o)
	for name, u := range o.Subscribers {
		if !isAbsHTTP(u) {
			return nil, fmt.Errorf("subscriber %s=%q: want an absolute http or https URL", name, u)
		}
	}
	if !validNamespace(o.Namespace) {
		return nil, fmt.Errorf("broker namespace %q: want a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)", o.Namespace)
	}
	if o.QueueSize < 1 || o.QueueBytes < 1 || o.Workers < 1 || o.DeliveryTimeout <= 0 || o.MaxBody < 1 {
		return nil, fmt.Errorf("broker options: queue size %d, queue bytes %d, workers %d, delivery timeout %s and max body %d must be positive",
			o.QueueSize, o.QueueBytes, o.Workers, o.DeliveryTimeout, o.MaxBody)
	}
	b := &Broker{name: cfg.Broker, opts: o, log: o.Logger, m: newMetrics(o.Registerer), quit: make(chan struct{})}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	for _, w := range cfg.Warnings {
		b.log.Warn(w)
	}
	used := map[string]bool{}
	for _, tr := range cfg.Triggers {
		b.addLane(tr, used)
	}
	for name := range o.Subscribers {
		if !used[name] {
			b.log.Warn("subscriber mapping names no Trigger's subscriber or dead-letter sink", "name", name)
		}
	}
	if err := o.Registerer.Register(newLaneCollector(b.lanes)); err != nil {
		b.cancel()
		return nil, fmt.Errorf("broker metrics: %w", err)
	}
	for _, l := range b.lanes {
		for i := range l.running {
			queue := l.queue
			if i >= l.workers {
				queue = l.dlQueue
			}
			b.wg.Add(1)
			go l.work(&l.running[i], queue)
		}
	}
	return b, nil
}

func withDefaults(o Options) Options {
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.QueueBytes == 0 {
		o.QueueBytes = DefaultQueueBytes
	}
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	if o.DeliveryTimeout == 0 {
		o.DeliveryTimeout = DefaultDeliveryTimeout
	}
	if o.MaxBody == 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	return o
}

func (b *Broker) addLane(tr *Trigger, used map[string]bool) {
	info := LaneInfo{Trigger: tr.Name, Workers: tr.Workers, QueueSize: tr.QueueSize}
	if info.Workers == 0 {
		info.Workers = b.opts.Workers
	}
	if info.QueueSize == 0 {
		info.QueueSize = b.opts.QueueSize
	}
	target := b.resolve(tr.Subscriber, used)
	if target == nil {
		b.log.Warn("Trigger disabled: its subscriber is neither an in-process handler nor mapped to a URL (--subscriber NAME=URL)",
			"trigger", tr.Name, "subscriber", tr.Subscriber.String())
		b.info = append(b.info, info)
		return
	}
	// Shown in logs and status: a URL's password stays out.
	info.Enabled, info.Subscriber = true, target.dest()
	var dls endpoint
	if d := tr.Delivery.DeadLetterSink; d != nil {
		if dls = b.resolve(*d, used); dls == nil {
			b.log.Warn("dead-letter sink not resolved: events that fail for good are dropped (and counted)",
				"trigger", tr.Name, "deadLetterSink", d.String())
		} else {
			info.DeadLetterSink = dls.dest()
		}
	}
	timeout := tr.Delivery.Timeout
	if timeout == 0 {
		timeout = b.opts.DeliveryTimeout
	}
	capacity := info.QueueSize + info.Workers
	l := &lane{
		b: b, tr: tr, target: target, dls: dls, timeout: timeout, workers: info.Workers,
		capacity: int64(capacity), maxBytes: b.opts.QueueBytes, queue: make(chan *task, capacity), timers: map[*task]*time.Timer{},
		running: make([]runSlot, info.Workers),
		log:     b.log.With("trigger", tr.Name), dropLogs: lograte.PerMinute(5).Saying("per Trigger"),
	}
	if dls != nil {
		l.dlQueue = make(chan *task, capacity)
		l.running = make([]runSlot, 2*info.Workers)
	}
	b.lanes = append(b.lanes, l)
	b.info = append(b.info, info)
	b.log.Info("Trigger lane ready", "trigger", tr.Name, "subscriber", info.Subscriber,
		"deadLetterSink", info.DeadLetterSink, "workers", info.Workers, "queueSize", info.QueueSize)
}

// resolve finds where a Destination's events go: a --subscriber URL for
// its ref, else an in-process handler, else its URI; nil if none.
func (b *Broker) resolve(d Destination, used map[string]bool) endpoint {
	if d.Ref == "" {
		return &httpEndpoint{url: d.URI, client: b.clientFor(d.CACerts), maxBody: b.opts.MaxBody}
	}
	used[d.Ref] = true
	if u, ok := b.opts.Subscribers[d.Ref]; ok {
		if d.URI != "" {
			// Knative resolves a uri beside a ref against the ref's URL.
			if base, err := url.Parse(u); err == nil {
				if rel, err := url.Parse(d.URI); err == nil {
					u = base.ResolveReference(rel).String()
				}
			}
		}
		return &httpEndpoint{url: u, client: b.clientFor(d.CACerts), maxBody: b.opts.MaxBody}
	}
	if h, ok := b.opts.Handlers[d.Ref]; ok && h != nil {
		return &handlerEndpoint{name: d.Ref, h: h, maxBody: b.opts.MaxBody}
	}
	return nil
}

// Name is the Broker's name from the manifests.
func (b *Broker) Name() string { return b.name }

// Lanes describes every Trigger's lane, enabled or not, by Trigger name,
// with what each holds now.
func (b *Broker) Lanes() []LaneInfo {
	out := append([]LaneInfo(nil), b.info...)
	for i := range out {
		for _, l := range b.lanes {
			if l.tr.Name == out[i].Trigger {
				out[i].Queued, out[i].InFlight = l.load()
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Trigger < out[j].Trigger })
	return out
}

// Shutdown stops taking events (Publish returns ErrClosed), delivers
// nothing more of what waits for a worker or a retry, and lets deliveries
// in flight finish until ctx ends, when they are cancelled. It logs and
// counts what the lanes still held, and returns it: events whose delivery
// never succeeded (queued, waiting to retry, or cancelled in flight; one
// per Trigger that held it), replies not yet published and dead-letter
// deliveries not yet made. The caller can save them for Restore after the
// next start (SaveSpool), or record what they stood for.
func (b *Broker) Shutdown(ctx context.Context) (held []Held, err error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, nil
	}
	b.closed = true
	b.mu.Unlock()
	for _, l := range b.lanes {
		l.stop()
	}
	close(b.quit)
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		b.cancel()
		err = fmt.Errorf("broker shutdown: deliveries in flight cancelled: %w", ctx.Err())
		select {
		case <-done:
		case <-time.After(time.Second):
			// An in-process handler that ignores its context (or whose
			// cleanup outlasts it); its worker ends when it returns.
		}
	}
	for _, l := range b.lanes {
		l.drain()
	}
	b.cancel()
	b.heldMu.Lock()
	defer b.heldMu.Unlock()
	// Deliveries still running are handed back as they began: what they
	// do after this is not waited for, and an event whose delivery
	// succeeds late may be delivered again after the next start
	// (at least once, never lost).
	late := 0
	b.handedBack = map[*task]bool{}
	for _, l := range b.lanes {
		late += l.handBackRunning()
	}
	b.heldDone = true
	if late > 0 {
		b.log.Warn("deliveries still running at shutdown handed back as they began; they may be delivered twice", "events", late)
	}
	if n := b.shutdownDrops.Load(); n > 0 {
		b.log.Warn("broker stopped holding events not yet delivered", "events", n)
	}
	return b.held, err
}

// ingressDest names the broker in knativeerrordest when a reply could not
// be published.
func (b *Broker) ingressDest() string { return "inprocess://broker/" + strings.ToLower(b.name) }
