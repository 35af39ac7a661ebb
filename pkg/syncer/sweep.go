package syncer

import (
	"context"
	"errors"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
)

// Sweeper runs the periodic sweep one step per sweep.requested event;
// *sweep.Sweeper is it.
type Sweeper interface {
	Step(ctx context.Context, reason string, c *sweep.Cursor) (sweep.Result, error)
	Everyone(ctx context.Context, at time.Time) error
}

// handleSweep runs one step of the sweep for a sweep.requested or a
// PingSource event (contract.ToSweep). A step without a cursor starts a
// sweep (or finds one running: covered, 202); a step with one does that
// batch. While the sweep goes on, the answer is 200 with the next
// sweep.requested, the continuation, which the Broker delivers back here
// (the sweep Trigger): so no single request runs long, whatever the number
// of users. The last batch answers 202 with nothing.
func (h *Handler) handleSweep(ctx context.Context, ev cloudevents.Event) (*cloudevents.Event, error) {
	if h.opts.Sweeper == nil {
		// Counted as an unhandled type: this instance cannot sweep.
		return nil, h.reject(rejectType, "event type %q is not handled by sync without a results sink: the sweep sends its replication requests there (set --results-sink or K_SINK)", ev.Type())
	}
	d, err := contract.ToSweep(ev)
	if err != nil {
		return nil, h.reject(rejectData, "%v", err)
	}
	var c *sweep.Cursor
	if d.Sweep != "" {
		c = &sweep.Cursor{Sweep: d.Sweep, Offset: d.Offset}
	}
	if d.All {
		// The event's time, so that the Broker's redelivery of it asks
		// for nothing more.
		at := ev.Time()
		if at.IsZero() {
			at = time.Now()
		}
		if err := h.opts.Sweeper.Everyone(ctx, at); err != nil {
			h.log.Warn("sweep of every user not begun; the Broker redelivers", "id", ev.ID(), "err", err)
			return nil, cehttp.NewResult(http.StatusServiceUnavailable, "sweep unavailable: %s", err.Error())
		}
	}
	res, err := h.opts.Sweeper.Step(ctx, d.Reason, c)
	if errors.Is(err, sweep.ErrBusy) {
		return nil, cehttp.NewResult(http.StatusServiceUnavailable, "%s; try again later", err.Error())
	}
	if err != nil {
		h.log.Warn("sweep step not done; the Broker redelivers", "id", ev.ID(), "sweep", d.Sweep, "offset", d.Offset, "err", err)
		return nil, cehttp.NewResult(http.StatusServiceUnavailable, "sweep unavailable: %s", err.Error())
	}
	if res.Next == nil {
		h.log.Debug("sweep step answered without a continuation", "id", ev.ID(), "sweep", res.Sweep, "outcome", res.Outcome)
		return nil, nil
	}
	hops := d.Hops + 1
	if hops >= maxReplyHops && h.opts.Results != nil {
		// Each reply costs one of the Broker's knativebrokerttl (255 for
		// a new event); a sweep of more steps than that would end there.
		// A new event starts the count again. If it cannot be sent, the
		// reply still can, with some of the TTL left.
		fresh, err := contract.SweepContinuation(res.Next.Sweep, res.Next.Offset, 0, d.Reason, h.opts.Source)
		if err == nil {
			err = h.opts.Results.Send(ctx, fresh)
		}
		if err == nil {
			h.log.Debug("sweep continuation sent as a new event", "sweep", res.Next.Sweep, "offset", res.Next.Offset, "hops", hops)
			return nil, nil
		}
		h.log.Warn("could not send the sweep's continuation as a new event; it goes back as the reply", "sweep", res.Next.Sweep,
			"offset", res.Next.Offset, "hops", hops, "err", err)
	}
	reply, err := contract.SweepContinuation(res.Next.Sweep, res.Next.Offset, hops, d.Reason, h.opts.Source)
	if err != nil {
		// Cannot happen: the cursor is the sweep's own. The sweep stays
		// locked until its TTL, then the next one starts over.
		h.log.Error("could not build the sweep continuation", "sweep", res.Next.Sweep, "err", err)
		return nil, nil
	}
	return &reply, nil
}

// maxReplyHops is how many continuations in a row go back as replies
// before one is sent as a new event: well under the Broker's TTL of 255.
const maxReplyHops = 200

// SinkSender sends the sweep's replication requests to the Broker through
// the results sink.
type SinkSender struct{ snd EventSender }

// NewSinkSender wraps the results sink's sender.
func NewSinkSender(snd EventSender) SinkSender { return SinkSender{snd: snd} }

// Send sends one replication.requested event for the sweep.
func (s SinkSender) Send(ctx context.Context, r sweep.Request) error {
	ev, err := contract.SweepReplication(r.Sweep, change.Request{User: r.User, Host: r.Host, Full: r.Full, Time: r.Time}, string(r.Reason))
	if err != nil {
		return err
	}
	return s.snd.Send(ctx, ev)
}
