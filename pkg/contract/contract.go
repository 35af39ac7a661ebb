// Package contract is dovewarden's CloudEvents contract: the event type
// names, extension attributes and data shapes other systems subscribe to.
// Type names are stable API; docs/events.md documents each of them.
package contract

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	gojson "github.com/goccy/go-json"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// CloudEvent types.
const (
	TypeMailboxChanged       = "org.dovewarden.mailbox.changed"
	TypeReplicationRequested = "org.dovewarden.replication.requested"
	TypeSweepRequested       = "org.dovewarden.sweep.requested"
	TypeReplicationSucceeded = "org.dovewarden.replication.succeeded"
	TypeReplicationFailed    = "org.dovewarden.replication.failed"

	// TypePingSource is not dovewarden's: it is the type of every event a
	// Knative PingSource sends (sources.knative.dev/v1; ceOverrides can
	// set only extensions, not the type), with source
	// /apis/v1/namespaces/NS/pingsources/NAME and the PingSource's data.
	// Sync reads it as a TypeSweepRequested that asks for a new sweep
	// (ToSweep); the sweep Trigger lets only the shipped PingSource's
	// through.
	TypePingSource = "dev.knative.sources.ping"
)

// Extension attributes.
const (
	// ExtPriority carries change.Priority; the Broker's Triggers filter on it.
	ExtPriority = "priority"
	// ExtPartitionKey is the username, so a Kafka Broker with ordered
	// delivery keeps one user's events in order.
	ExtPartitionKey = "partitionkey"
	// ExtRetryBy is a replication.failed event's data retry_by as an
	// attribute, so a Trigger can pick the final failures (sweep, none)
	// from the attempts that are retried (sync, broker).
	ExtRetryBy = "retryby"
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
	// Ingest maps every change it accepts: the usual change gets the event
	// the SDK's setters would build, without their parsing and checking.
	if ev, ok := fromUsualChange(&c); ok {
		return ev, nil
	}
	return fromChange(c)
}

// fromUsualChange builds the event fromChange builds, field by field as
// the SDK's setters set them, for a change whose ID and host the setters
// and Validate take as they are: an ID with something but spaces, a host
// of letters, digits, '.', '-' and '_' (url.Parse makes it the URL's path,
// unescaped). It reports false for any other change, and when the data
// cannot be encoded, for fromChange to say why. TestFromChange_UsualPath
// checks that both build the same event.
func fromUsualChange(c *change.Change) (cloudevents.Event, bool) {
	id := strings.TrimSpace(c.ID)
	if id == "" || !plainHost(c.Host) {
		return cloudevents.Event{}, false
	}
	// goccy/go-json encodes as encoding/json does (HTML escapes, invalid
	// UTF-8, omitzero), several times faster; the test compares the two.
	data, err := gojson.Marshal(mailboxChanged(c))
	if err != nil {
		return cloudevents.Event{}, false
	}
	ct := cloudevents.ApplicationJSON
	ec := &cloudevents.EventContextV1{
		ID:              id,
		Type:            TypeMailboxChanged,
		Source:          cloudevents.URIRef{URL: url.URL{Path: c.Host}},
		DataContentType: &ct,
		Extensions:      map[string]any{ExtPriority: string(c.Priority), ExtPartitionKey: c.User},
	}
	if s := strings.TrimSpace(c.User); s != "" {
		ec.Subject = &s
	}
	if !c.Time.IsZero() {
		ec.Time = &cloudevents.Timestamp{Time: c.Time}
	}
	return cloudevents.Event{Context: ec, DataEncoded: data}, true
}

// plainHost reports whether host is not empty and has only letters,
// digits, '.', '-' and '_': a URI reference that is a path needing no
// escaping.
func plainHost(host string) bool {
	if host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func mailboxChanged(c *change.Change) MailboxChanged {
	return MailboxChanged{
		User: c.User, Host: c.Host, Event: c.Event, Command: c.Command,
		Mailbox: c.Mailbox, DestinationMailbox: c.DestinationMailbox,
		OldMailbox: c.OldMailbox, Session: c.Session, MessageID: c.MessageID,
		Priority: string(c.Priority), ObservedAt: c.Observed.UTC(),
	}
}

// fromChange is FromChange through the SDK's setters, which check every
// attribute.
func fromChange(c change.Change) (cloudevents.Event, error) {
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
	if err := ev.SetData(cloudevents.ApplicationJSON, mailboxChanged(&c)); err != nil {
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
	if err := decodeData(ev, &d); err != nil {
		return change.Change{}, fmt.Errorf("data of event %s: %w", ev.ID(), err)
	}
	c := change.Change{
		ID: ev.ID(), User: ev.Subject(), Host: ev.Source(), Time: ev.Time(),
		Event: d.Event, Command: d.Command, Mailbox: d.Mailbox,
		DestinationMailbox: d.DestinationMailbox, OldMailbox: d.OldMailbox,
		Session: d.Session, MessageID: d.MessageID, Observed: d.ObservedAt,
	}
	user, err := eventUser(ev, d.User)
	if err != nil {
		return change.Change{}, err
	}
	c.User = user
	if p, ok := ev.Extensions()[ExtPriority].(string); ok {
		c.Priority = change.Priority(p)
	}
	if !c.Priority.Valid() {
		c.Priority = change.Low
	}
	return c, nil
}

// eventUser is the user an event is about: its subject, or data's user
// when it has none. When both are there they must agree, or sync would
// replicate a user that does not exist, with one exception: a subject
// that is data's user percent-encoded. CloudEvents' HTTP binding (3.1.3.2)
// has header values percent-encoded, which some SDKs do (C#) and sdk-go
// neither does nor undoes, so a request for "jürgen" from such a sender
// arrives with the subject "j%C3%BCrgen"; data, JSON, holds the name.
func eventUser(ev cloudevents.Event, dataUser string) (string, error) {
	subject := ev.Subject()
	switch {
	case subject == "":
		return dataUser, nil
	case dataUser == "" || dataUser == subject:
		return subject, nil
	}
	if u, err := url.PathUnescape(subject); err == nil && u == dataUser {
		return dataUser, nil
	}
	return "", fmt.Errorf("event %s: subject %q and data user %q differ", ev.ID(), subject, dataUser)
}

// decodeData decodes ev's JSON data into v: with goccy/go-json when the
// data is plain JSON (the sync function reads every change it handles),
// else, or when that refuses it, with the SDK's DataAs, which then says
// what is wrong.
func decodeData(ev cloudevents.Event, v any) error {
	if ct := ev.DataContentType(); (ct == "" || ct == cloudevents.ApplicationJSON) && !ev.DataBase64 {
		if gojson.Unmarshal(ev.Data(), v) == nil {
			return nil
		}
	}
	return ev.DataAs(v)
}
