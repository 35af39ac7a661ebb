package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/types"
)

// Publish puts ev into the broker, as a POST to a Broker's ingress does:
// it is queued for every Trigger whose filter matches (none is fine), or
// for none at all when a matching queue is full (ErrQueueFull). It never
// blocks on subscribers.
func (b *Broker) Publish(ctx context.Context, ev cloudevents.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.publish(ev, sourceIngress, nil, nil, b.opts.Namespace, false)
}

// Emit is Publish for the events an in-process function makes of its own
// accord, beside its replies: the sync function's replication.failed of an
// attempt it retries, its requests, the sweep's. While the broker stops,
// until Shutdown has handed back what it holds, such an event is held with
// that, for each Trigger it matches, instead of refused: a function still
// finishing its work makes them, and a spool file keeps them as it keeps
// the lanes' events. Afterwards it is refused (ErrClosed).
func (b *Broker) Emit(ctx context.Context, ev cloudevents.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.publish(ev, sourceIngress, nil, nil, b.opts.Namespace, true)
}

// Send is Publish, so the broker can stand where a Broker URL sender would
// (ingest's Sender).
func (b *Broker) Send(ctx context.Context, ev cloudevents.Event) error { return b.Publish(ctx, ev) }

// publish does what Knative's broker ingress and filter do to an event on
// the way in: validate, take the TTL (decrementing a reply's), stamp the
// arrival time, then fan out to the matching lanes, all or none. hdr are
// the pass-through headers that came with the event (PassThroughHeaders;
// shared by the lanes, never changed) and ns its namespace, for
// Kn-Namespace. hold: while the broker stops, hold the event for Shutdown's
// answer rather than refuse it (Emit).
func (b *Broker) publish(ev cloudevents.Event, source string, replyTTL *int32, hdr http.Header, ns string, hold bool) error {
	ev = ev.Clone()
	if replyTTL != nil {
		ev.SetExtension(ExtTTL, *replyTTL)
	}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if err := canonicalize(&ev); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if err := headerSafe(ev); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	ttl := takeTTL(&ev)
	if ttl <= 0 {
		return ErrTTLExhausted
	}
	ev.SetExtension(ExtArrivalTime, types.FormatTime(time.Now()))
	var matched []*lane
	for _, l := range b.lanes {
		if l.tr.Filter.Match(ev) {
			matched = append(matched, l)
		}
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		if hold {
			return b.holdAtStop(ev, ttl, hdr, ns, matched)
		}
		return ErrClosed
	}
	defer b.mu.RUnlock()
	// Reserve a place in every matching lane before queuing in any, so an
	// event is either routed to all its Triggers or refused (and the
	// sender retries), never half-delivered.
	//
	// A reply is the exception: its sender is another Trigger's lane,
	// which would hold the event that caused it while it retried, so one
	// stuck subscriber (an alert webhook) would fill the sync lanes and
	// then refuse new mail at the ingress. On a Knative Broker a reply is
	// never refused for one Trigger's backlog either. So a reply goes to
	// the matching lanes with room, and a full one loses it, counted.
	size := eventSize(ev)
	queued := matched[:0:0]
	for _, l := range matched {
		full := l.reserve(size)
		if full == nil {
			queued = append(queued, l)
			continue
		}
		b.m.rejected.WithLabelValues(l.tr.Name).Inc()
		if source != sourceReply {
			for _, r := range queued {
				r.unreserve(size)
			}
			return full
		}
		l.dropLogs.Log(context.Background(), l.log, slog.LevelWarn, "", "reply dropped for this Trigger: its queue is full",
			"id", ev.ID(), "type", ev.Type(), "subject", ev.Subject(), "err", full)
		b.m.dropped.WithLabelValues(l.tr.Name, dropQueueFull).Inc() // after its line: whoever sees the count finds it
	}
	for _, l := range queued {
		l.queue <- &task{ev: ev, ttl: ttl, hdr: hdr, ns: ns, size: size} // never blocks: the place is reserved
	}
	if len(queued) == 0 && len(matched) > 0 {
		return nil // a reply every matching lane dropped: not published
	}
	b.m.published.WithLabelValues(source).Inc()
	return nil
}

// holdAtStop adds ev to what Shutdown hands back, once for each of the
// lanes it matched, as a lane's event not yet delivered; ErrClosed once
// Shutdown has answered.
func (b *Broker) holdAtStop(ev cloudevents.Event, ttl int32, hdr http.Header, ns string, matched []*lane) error {
	b.heldMu.Lock()
	defer b.heldMu.Unlock()
	if b.heldDone {
		return ErrClosed
	}
	for _, l := range matched {
		b.m.dropped.WithLabelValues(l.tr.Name, dropShutdown).Inc()
		b.shutdownDrops.Add(1)
		b.held = append(b.held, Held{Trigger: l.tr.Name, Phase: PhaseDeliver, TTL: ttl, Event: ev, Header: hdr, Namespace: ns})
	}
	return nil
}

// canonicalize turns every extension into its CloudEvents string form, as
// the HTTP binary binding delivers it to a Knative Broker's filter (an
// integer extension set in-process is "5" there, and filters compare
// strings), and the time into UTC, as sdk-go writes it when Knative's
// ingress forwards the event (types.FormatTime): a filter on time, and
// the subscriber, see 08:00:00Z for an event sent at 10:00:00+02:00.
// Every attribute that travels as a header loses the spaces and tabs at
// its ends, as net/http trims a header value it reads: an event posted in
// structured mode with subject " u1" or priority "high " reaches the
// filters and the subscriber as "u1" and "high" there.
// It also refuses an extension name the CloudEvents spec does not allow:
// sdk-go's HTTP binding lets some through, depending on the order it reads
// the headers in.
func canonicalize(ev *cloudevents.Event) error {
	if tm := ev.Time(); !tm.IsZero() {
		ev.SetTime(tm.UTC())
	}
	trimAttributes(ev.Context)
	for k, v := range ev.Extensions() {
		if err := checkExtensionName(k); err != nil {
			return err
		}
		if s, ok := v.(string); ok {
			if t := trimHeader(s); t != s {
				ev.SetExtension(k, t)
			}
			continue
		}
		s, err := types.Format(v)
		if err != nil {
			return fmt.Errorf("extension %s: %w", k, err)
		}
		ev.SetExtension(k, s)
	}
	return nil
}

// trimAttributes trims id, type, subject and datacontenttype as their
// headers are trimmed. The fields are set directly: sdk-go's setters trim
// any Unicode space, which a header keeps (and \n, which headerSafe is to
// refuse). A value of blanks cannot get here: Validate refuses it. source
// and dataschema are URIs, whose string form escapes a space and which
// cannot hold a tab. The pointers are replaced, not written through: the
// caller's event, cloned, shares them.
func trimAttributes(ec cloudevents.EventContext) {
	switch c := ec.(type) {
	case *cloudevents.EventContextV1:
		c.ID, c.Type = trimHeader(c.ID), trimHeader(c.Type)
		c.Subject, c.DataContentType = trimHeaderPtr(c.Subject), trimHeaderPtr(c.DataContentType)
	case *cloudevents.EventContextV03:
		c.ID, c.Type = trimHeader(c.ID), trimHeader(c.Type)
		c.Subject, c.DataContentType = trimHeaderPtr(c.Subject), trimHeaderPtr(c.DataContentType)
	}
}

// trimHeader trims s as net/textproto trims a header value it reads:
// spaces and tabs only.
func trimHeader(s string) string { return strings.Trim(s, " \t") }

func trimHeaderPtr(p *string) *string {
	if p == nil {
		return nil
	}
	s := trimHeader(*p)
	return &s
}

// checkExtensionName refuses an extension name the CloudEvents spec does
// not allow, and "data", which the JSON format keeps for the event's data:
// such an extension, sent on in structured mode or saved in the spool
// file, would come back as the data.
func checkExtensionName(k string) error {
	if !validExtensionName(k) {
		return fmt.Errorf("extension name %q: CloudEvents attribute names are lower-case ASCII letters and digits", k)
	}
	if k == "data" {
		return errors.New(`extension name "data": the JSON format keeps it for the event's data`)
	}
	return nil
}

// headerSafe refuses an event with an attribute no HTTP header can carry
// (a control character other than tab, such as a newline in the subject).
// Knative's broker ingress forwards every event to its channel in binary
// mode, each attribute a header; net/http refuses to send such a one, so
// the ingress answers 500 and the event goes nowhere. Refused here, the
// sender gets a 400 naming the attribute. Call it after canonicalize,
// when every extension is a string.
func headerSafe(ev cloudevents.Event) error {
	for _, a := range [...]struct{ name, value string }{
		{"id", ev.ID()}, {"source", ev.Source()}, {"type", ev.Type()}, {"subject", ev.Subject()},
		{"datacontenttype", ev.DataContentType()}, {"dataschema", ev.DataSchema()},
	} {
		if i := headerCTL(a.value); i >= 0 {
			return unsendable(a.name, a.value, i)
		}
	}
	bad := "" // the first by name, so the answer is the same every time
	for name, v := range ev.Extensions() {
		if s, _ := v.(string); headerCTL(s) >= 0 && (bad == "" || name < bad) {
			bad = name
		}
	}
	if bad != "" {
		s, _ := ev.Extensions()[bad].(string)
		return unsendable(bad, s, headerCTL(s))
	}
	return nil
}

func unsendable(name, value string, i int) error {
	return fmt.Errorf("attribute %s holds a control character (%q at byte %d): no HTTP header can carry it, and a Knative Broker forwards every event with its attributes as headers",
		name, value[i], i)
}

// takeTTL removes the TTL extension and returns what it becomes, by
// Knative's TTLDefaulter: absent or unreadable is DefaultTTL, else one
// less (not below 0).
func takeTTL(ev *cloudevents.Event) int32 {
	raw, ok := ev.Extensions()[ExtTTL]
	ev.SetExtension(ExtTTL, nil)
	if !ok {
		return DefaultTTL
	}
	n, err := types.ToInteger(raw)
	if err != nil {
		return DefaultTTL
	}
	return max(n-1, 0)
}

func validExtensionName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
