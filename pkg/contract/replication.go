package contract

import (
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// Sync modes, as the result events name them.
const (
	ModeFull        = "full"
	ModeIncremental = "incremental"
)

// ReplicationRequested is the data of TypeReplicationRequested: replicate
// this user now (like `doveadm replicator replicate [-f]`).
type ReplicationRequested struct {
	User string `json:"user"`
	// Host is the Dovecot host to sync from; empty for the default host.
	Host string `json:"host,omitempty"`
	// Full asks for a full sync.
	Full bool `json:"full,omitempty"`
	// Priority is high or low; the priority extension wins when both are set.
	Priority string `json:"priority,omitempty"`
	// Reason says who asked and why, for logs (admin, sweep, ...).
	Reason string `json:"reason,omitempty"`
}

// ReplicationSucceeded is the data of TypeReplicationSucceeded.
type ReplicationSucceeded struct {
	User        string    `json:"user"`
	Host        string    `json:"host"`
	Destination string    `json:"destination"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	DurationMS  int64     `json:"duration_ms"`
	// LagMS runs from the oldest change the dsync covered to End.
	LagMS int64 `json:"lag_ms"`
	// Coalesced counts the changes this replication covered.
	Coalesced int    `json:"coalesced"`
	Mode      string `json:"mode"`
	Attempts  int    `json:"attempts"`
	Priority  string `json:"priority"`
	// TriggerID is the id of the event that caused the replication.
	TriggerID string `json:"trigger_id,omitempty"`
}

// ReplicationFailed is the data of TypeReplicationFailed: one failed dsync
// attempt.
type ReplicationFailed struct {
	User        string `json:"user"`
	Host        string `json:"host"`
	Destination string `json:"destination"`
	Error       string `json:"error"`
	// Class is the failure's row in the exit-code policy (tempfail,
	// transport, no_user, ...).
	Class       string `json:"class"`
	ExitCode    int    `json:"exit_code"`
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"max_attempts"`
	Retryable   bool   `json:"retryable"`
	// RetryBy: sync (at RetryAt), broker (redelivery), sweep, or none.
	RetryBy   string     `json:"retry_by"`
	RetryAt   *time.Time `json:"retry_at,omitempty"`
	Mode      string     `json:"mode"`
	Start     time.Time  `json:"start,omitzero"`
	End       time.Time  `json:"end"`
	Priority  string     `json:"priority"`
	TriggerID string     `json:"trigger_id,omitempty"`
}

// Requested makes a TypeReplicationRequested event; reason says why, for
// logs (may be empty), and source names the requester (e.g.
// "dovewarden/cli").
func Requested(req change.Request, reason, source string) (cloudevents.Event, error) {
	ev := cloudevents.NewEvent()
	if err := checkReason(reason); err != nil {
		return ev, err
	}
	id := req.ID
	if id == "" {
		id = uuid.NewString()
	}
	ev.SetID(id)
	ev.SetType(TypeReplicationRequested)
	ev.SetSource(source)
	ev.SetSubject(req.User)
	at := req.Time
	if at.IsZero() {
		at = time.Now()
	}
	ev.SetTime(at)
	prio := req.Priority
	if !prio.Valid() {
		prio = change.High
	}
	ev.SetExtension(ExtPriority, string(prio))
	ev.SetExtension(ExtPartitionKey, req.User)
	data := ReplicationRequested{User: req.User, Host: req.Host, Full: req.Full, Priority: string(prio), Reason: reason}
	if err := ev.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return ev, fmt.Errorf("encode replication request of %q: %w", req.User, err)
	}
	return ev, ev.Validate()
}

// ToRequest reads a TypeMailboxChanged or TypeReplicationRequested event
// into a replication request. A request without a priority is high: an
// admin asking is waiting.
func ToRequest(ev cloudevents.Event) (change.Request, error) {
	switch ev.Type() {
	case TypeMailboxChanged:
		c, err := ToChange(ev)
		if err != nil {
			return change.Request{}, err
		}
		return change.Request{ID: c.ID, User: c.User, Host: c.Host, Time: c.Time, Observed: c.Observed, Priority: c.Priority}, nil
	case TypeReplicationRequested:
		var d ReplicationRequested
		if len(ev.Data()) > 0 {
			if err := ev.DataAs(&d); err != nil {
				return change.Request{}, fmt.Errorf("data of event %s: %w", ev.ID(), err)
			}
		}
		user, err := eventUser(ev, d.User)
		if err != nil {
			return change.Request{}, err
		}
		r := change.Request{ID: ev.ID(), User: user, Host: d.Host, Time: ev.Time(), Full: d.Full, Explicit: true,
			Priority: change.Priority(d.Priority)}
		if p, ok := ev.Extensions()[ExtPriority].(string); ok {
			r.Priority = change.Priority(p)
		}
		if !r.Priority.Valid() {
			r.Priority = change.High
		}
		return r, nil
	}
	return change.Request{}, fmt.Errorf("event type %q is not %s or %s", ev.Type(), TypeMailboxChanged, TypeReplicationRequested)
}

// Succeeded makes the TypeReplicationSucceeded event of a successful
// replication; source names the sync function.
func Succeeded(req change.Request, res change.Result, source string) (cloudevents.Event, error) {
	data := ReplicationSucceeded{
		User: res.User, Host: res.Host, Destination: res.Destination, Start: res.Start, End: res.End,
		DurationMS: res.End.Sub(res.Start).Milliseconds(), LagMS: res.Lag.Milliseconds(), Coalesced: res.Coalesced,
		Mode: mode(res.Full), Attempts: res.Attempts, Priority: string(req.Priority), TriggerID: req.ID,
	}
	return result(TypeReplicationSucceeded, res.User, string(req.Priority), source, res.End, data)
}

// Failed makes the TypeReplicationFailed event of one failed attempt.
func Failed(req change.Request, f change.Failure, source string) (cloudevents.Event, error) {
	data := ReplicationFailed{
		User: f.User, Host: f.Host, Destination: f.Destination, Error: f.Error, Class: f.Class, ExitCode: f.ExitCode,
		Attempt: f.Attempt, MaxAttempts: f.MaxAttempts, Retryable: f.Retryable, RetryBy: f.RetryBy,
		Mode: mode(f.Full), Start: f.Start, End: f.End, Priority: string(req.Priority), TriggerID: req.ID,
	}
	if !f.RetryAt.IsZero() {
		at := f.RetryAt.UTC()
		data.RetryAt = &at
	}
	end := f.End
	if end.IsZero() {
		end = time.Now()
	}
	ev, err := result(TypeReplicationFailed, f.User, string(req.Priority), source, end, data)
	if err == nil && f.RetryBy != "" {
		ev.SetExtension(ExtRetryBy, f.RetryBy)
	}
	return ev, err
}

func result(typ, user, prio, source string, at time.Time, data any) (cloudevents.Event, error) {
	ev := cloudevents.NewEvent()
	ev.SetID(uuid.NewString())
	ev.SetType(typ)
	ev.SetSource(source)
	ev.SetSubject(user)
	ev.SetTime(at)
	if change.Priority(prio).Valid() {
		ev.SetExtension(ExtPriority, prio)
	}
	ev.SetExtension(ExtPartitionKey, user)
	if err := ev.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return ev, fmt.Errorf("encode %s of %q: %w", typ, user, err)
	}
	if err := ev.Validate(); err != nil {
		return ev, fmt.Errorf("%s of %q: %w", typ, user, err)
	}
	return ev, nil
}

func mode(full bool) string {
	if full {
		return ModeFull
	}
	return ModeIncremental
}
