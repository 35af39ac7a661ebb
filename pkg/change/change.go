// Package change holds the domain's own types: a change to a user's mail,
// seen on one Dovecot host, and how urgently it must be replicated. It
// imports no infrastructure; Dovecot parsing, CloudEvents and Redis adapt to
// it.
package change

import "time"

// Priority says how urgently a change must be replicated. It is the value of
// the CloudEvent extension the Broker's Triggers filter on.
type Priority string

const (
	// High is new mail: delivery, APPEND, COPY and MOVE. Users notice a
	// missing new message first, so it goes through the fast lane.
	High Priority = "high"
	// Low is every other change: flags, expunges, subscriptions, mailbox
	// create/rename/delete, metadata and ACLs.
	Low Priority = "low"
)

// Valid reports whether p is one of the known priorities.
func (p Priority) Valid() bool { return p == High || p == Low }

// Change is one event on a Dovecot host that changed a user's mail.
type Change struct {
	// ID is deterministic: the same Dovecot event always yields the same ID,
	// so a redelivered or resent change can be recognised.
	ID string
	// User is the Dovecot username whose mail changed.
	User string
	// Host names the Dovecot host the change happened on.
	Host string
	// Time is when the change finished on that host, by its clock.
	Time time.Time
	// Observed, when set, is when dovewarden first saw the change, by the
	// clock of the Redis server the sync function decides with. Any dsync
	// that starts later certainly covers the change, whatever the Dovecot
	// host's clock says, so coalescing needs no clock-skew margin.
	Observed time.Time
	// Priority is the replication lane.
	Priority Priority
	// Event is the Dovecot event name (imap_command_finished, ...).
	Event string
	// Command is the IMAP or POP3 command, upper case, when there is one.
	Command string
	// Mailbox is the mailbox the change happened in, when known: the
	// selected or named mailbox, the source of COPY/MOVE, the new name of a
	// RENAME.
	Mailbox string
	// DestinationMailbox is the target of COPY and MOVE.
	DestinationMailbox string
	// OldMailbox is the previous name of a renamed mailbox.
	OldMailbox string
	// Session is Dovecot's session ID, to correlate with Dovecot's logs.
	Session string
	// MessageID is the delivered message's Message-ID (deliveries only).
	MessageID string
}
