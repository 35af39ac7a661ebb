package contract

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// SourceSweep is the source of the replication requests the sweep sends.
const SourceSweep = "dovewarden/sweep"

// SweepRequested is the data of TypeSweepRequested: list users and request
// the stale, failed and pending ones. Without Sweep it asks for a new sweep
// (the CLI; the PingSource's TypePingSource events carry it too); with
// it, it is the sync function's own continuation of a running sweep at
// Offset.
type SweepRequested struct {
	// Reason says who asked, for logs: "schedule" (the PingSource), "cli".
	// Continuations carry the sweep's original reason.
	Reason string `json:"reason,omitempty"`
	// Sweep is the running sweep's id (continuations only).
	Sweep string `json:"sweep,omitempty"`
	// Offset is the position in the sweep's candidate list where the next
	// batch starts (continuations only, where it is always written, 0
	// too).
	Offset int64 `json:"offset,omitempty"`
	// Hops counts the continuations before this one that went back into
	// the Broker as a step's reply, since one was sent as a new event
	// (continuations only). Each reply costs one of the Broker's
	// knativebrokerttl, so the sync function sends a continuation as a new
	// event, with a fresh TTL, before they run out.
	Hops int `json:"hops,omitempty"`
	// All asks a new sweep to request every listed user whose last
	// successful dsync started before the event's time, not only the
	// pending, failed and stale ones (dovewarden sweep --all): changes
	// that left no mark, lost in a long outage or dead-lettered, are
	// replicated too. The sweeps after it do the same for users it could
	// not reach, until the full-sync interval has passed.
	All bool `json:"all,omitempty"`
}

// MaxHops bounds SweepRequested.Hops: the Broker's TTL starts at 255.
const MaxHops = 255

// MarshalJSON writes a continuation's offset even when it is 0, as
// docs/events.md promises subscribers.
func (d SweepRequested) MarshalJSON() ([]byte, error) {
	type plain SweepRequested
	if d.Sweep == "" {
		return json.Marshal(plain(d))
	}
	return json.Marshal(struct {
		plain
		Offset int64 `json:"offset"`
	}{plain(d), d.Offset})
}

// Bounds of SweepRequested's fields: ids are the sync function's own
// (e.g. 20261129T101700Z-3f2a9c), reasons (of replication requests too)
// free text for logs.
const (
	maxSweepID = 64
	maxReason  = 200
)

// sweepIDSpace makes continuation and request ids deterministic, so a
// resent one can be recognised.
var sweepIDSpace = uuid.MustParse("0c7b8e62-5a51-4f0e-8a8e-73776565703a")

// SweepRequest makes a TypeSweepRequested event asking for a new sweep;
// source names the asker (e.g. "dovewarden/cli"); all asks for every user
// (SweepRequested.All).
func SweepRequest(reason, source string, all bool) (cloudevents.Event, error) {
	return sweepEvent(uuid.NewString(), source, SweepRequested{Reason: reason, All: all})
}

// SweepContinuation makes the TypeSweepRequested event that asks for the
// batch at offset of a running sweep; the sync function replies with it
// (hops: the replies before it since a continuation was a new event).
func SweepContinuation(sweep string, offset int64, hops int, reason, source string) (cloudevents.Event, error) {
	id := uuid.NewSHA1(sweepIDSpace, fmt.Appendf(nil, "continue/%s/%d", sweep, offset)).String()
	return sweepEvent(id, source, SweepRequested{Reason: reason, Sweep: sweep, Offset: offset, Hops: hops})
}

func sweepEvent(id, source string, d SweepRequested) (cloudevents.Event, error) {
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetType(TypeSweepRequested)
	ev.SetSource(source)
	ev.SetTime(time.Now())
	// Like the PingSource's (its ceOverrides): a sweep is bulk work.
	ev.SetExtension(ExtPriority, string(change.Low))
	if err := checkSweep(d); err != nil {
		return ev, err
	}
	if err := ev.SetData(cloudevents.ApplicationJSON, d); err != nil {
		return ev, fmt.Errorf("encode sweep request: %w", err)
	}
	return ev, ev.Validate()
}

// ToSweep reads a TypeSweepRequested event's data, or a TypePingSource
// event's (the PingSource's data, e.g. {"reason":"schedule"}), which
// always asks for a new sweep: one that names a sweep or an offset is
// refused, as it cannot be a continuation. No data at all asks for a new
// sweep.
func ToSweep(ev cloudevents.Event) (SweepRequested, error) {
	var d SweepRequested
	if ev.Type() != TypeSweepRequested && ev.Type() != TypePingSource {
		return d, fmt.Errorf("event type %q is not %s or %s", ev.Type(), TypeSweepRequested, TypePingSource)
	}
	if len(ev.Data()) > 0 {
		if err := ev.DataAs(&d); err != nil {
			return d, fmt.Errorf("data of event %s: %w", ev.ID(), err)
		}
	}
	if ev.Type() == TypePingSource && (d.Sweep != "" || d.Offset != 0) {
		return d, fmt.Errorf("event %s: a %s event asks for a new sweep: its data cannot name a sweep or an offset (only the sync function's %s continues one)",
			ev.ID(), TypePingSource, TypeSweepRequested)
	}
	if err := checkSweep(d); err != nil {
		return d, fmt.Errorf("event %s: %w", ev.ID(), err)
	}
	return d, nil
}

// checkSweep keeps what reaches Redis keys and logs plain.
func checkSweep(d SweepRequested) error {
	if len(d.Sweep) > maxSweepID {
		return fmt.Errorf("sweep id of %d bytes exceeds %d", len(d.Sweep), maxSweepID)
	}
	for i := 0; i < len(d.Sweep); i++ {
		c := d.Sweep[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("sweep id %q: only letters, digits and - _ . are allowed", d.Sweep)
		}
	}
	if d.Offset < 0 || (d.Offset > 0 && d.Sweep == "") {
		return fmt.Errorf("sweep offset %d: want 0 or more, and only with a sweep id", d.Offset)
	}
	if d.All && d.Sweep != "" {
		return fmt.Errorf("sweep %s: all asks for a new sweep, not a continuation", d.Sweep)
	}
	if d.Hops < 0 || d.Hops > MaxHops || (d.Hops > 0 && d.Sweep == "") {
		return fmt.Errorf("sweep hops %d: want 0 to %d, and only with a sweep id", d.Hops, MaxHops)
	}
	if err := checkReason(d.Reason); err != nil {
		return fmt.Errorf("sweep %w", err)
	}
	return nil
}

// checkReason bounds a request's free-text reason, which ends up in logs.
func checkReason(reason string) error {
	if len(reason) > maxReason || !utf8.ValidString(reason) {
		return fmt.Errorf("reason: want at most %d bytes of UTF-8", maxReason)
	}
	for _, r := range reason {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("reason %q has a control character", reason)
		}
	}
	return nil
}

// SweepReplication makes the TypeReplicationRequested event the sweep
// sends for one user: low priority (the bulk lane), time at (when the sweep
// decided: a dsync that started after it covers the request), reason
// "sweep:<why>", and an id derived from the sweep and the user, so a
// request sent again when a batch is retried is the same event.
func SweepReplication(sweep string, req change.Request, why string) (cloudevents.Event, error) {
	req.ID = uuid.NewSHA1(sweepIDSpace, fmt.Appendf(nil, "request/%s/%s", sweep, req.User)).String()
	req.Priority = change.Low
	ev, err := Requested(req, "sweep:"+why, SourceSweep)
	if err != nil {
		return ev, fmt.Errorf("sweep request of %q: %w", req.User, err)
	}
	return ev, nil
}
