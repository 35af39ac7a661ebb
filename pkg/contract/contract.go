// Package contract is dovewarden's CloudEvents contract: the event type
// names, extension attributes and data shapes other systems subscribe to.
// Type names are stable API; docs/events.md documents each of them.
package contract

import (
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// CloudEvent types.
const (
	TypeMailboxChanged       = "org.dovewarden.mailbox.changed"
	TypeReplicationRequested = "org.dovewarden.replication.requested"
	TypeSweepRequested       = "org.dovewarden.sweep.requested"
	TypeReplicationSucceeded = "org.dovewarden.replication.succeeded"
	TypeReplicationFailed    = "org.dovewarden.replication.failed"
)

// Extension attributes.
const (
	// ExtPriority carries change.Priority; the Broker's Triggers filter on it.
	ExtPriority = "priority"
	// ExtPartitionKey is the username, so a Kafka Broker with ordered
	// delivery keeps one user's events in order.
	ExtPartitionKey = "partitionkey"
)

// MailboxChanged is the data of TypeMailboxChanged.
type MailboxChanged struct {
	User               string `json:"user"`
	Host               string `json:"host"`
	Event              string `json:"event"`
	Command            string `json:"command,omitempty"`
	Mailbox            string `json:"mailbox,omitempty"`
	DestinationMailbox string `json:"destination_mailbox,omitempty"`
	OldMailbox         string `json:"old_mailbox,omitempty"`
	Session            string `json:"session,omitempty"`
	MessageID          string `json:"message_id,omitempty"`
	Priority           string `json:"priority"`
	// ObservedAt is Change.Observed: when ingest saw the change, by the
	// sync function's Redis clock (absent when ingest has no Redis).
	ObservedAt time.Time `json:"observed_at,omitzero"`
}

// FromChange maps a change to its CloudEvent: subject is the user, source
// the Dovecot host, time when the change finished, id the change's
// deterministic ID.
func FromChange(c change.Change) (cloudevents.Event, error) {
	ev := cloudevents.NewEvent()
	ev.SetID(c.ID)
	ev.SetType(TypeMailboxChanged)
	ev.SetSource(c.Host)
	ev.SetSubject(c.User)
	if !c.Time.IsZero() {
		ev.SetTime(c.Time)
	}
	ev.SetExtension(ExtPriority, string(c.Priority))
	ev.SetExtension(ExtPartitionKey, c.User)
	data := MailboxChanged{
		User: c.User, Host: c.Host, Event: c.Event, Command: c.Command,
		Mailbox: c.Mailbox, DestinationMailbox: c.DestinationMailbox,
		OldMailbox: c.OldMailbox, Session: c.Session, MessageID: c.MessageID,
		Priority: string(c.Priority), ObservedAt: c.Observed.UTC(),
	}
	if err := ev.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return ev, fmt.Errorf("encode data of change %s: %w", c.ID, err)
	}
	if err := ev.Validate(); err != nil {
		return ev, fmt.Errorf("change %s of user %q on host %q: %w", c.ID, c.User, c.Host, err)
	}
	return ev, nil
}

// ToChange reads a TypeMailboxChanged event back into a change (the sync
// function's side of the contract).
func ToChange(ev cloudevents.Event) (change.Change, error) {
	if ev.Type() != TypeMailboxChanged {
		return change.Change{}, fmt.Errorf("event type %q is not %s", ev.Type(), TypeMailboxChanged)
	}
	var d MailboxChanged
	if err := ev.DataAs(&d); err != nil {
		return change.Change{}, fmt.Errorf("data of event %s: %w", ev.ID(), err)
	}
	c := change.Change{
		ID: ev.ID(), User: ev.Subject(), Host: ev.Source(), Time: ev.Time(),
		Event: d.Event, Command: d.Command, Mailbox: d.Mailbox,
		DestinationMailbox: d.DestinationMailbox, OldMailbox: d.OldMailbox,
		Session: d.Session, MessageID: d.MessageID, Observed: d.ObservedAt,
	}
	if c.User == "" {
		c.User = d.User
	}
	if p, ok := ev.Extensions()[ExtPriority].(string); ok {
		c.Priority = change.Priority(p)
	}
	if !c.Priority.Valid() {
		c.Priority = change.Low
	}
	return c, nil
}
