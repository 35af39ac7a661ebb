package ingest

import (
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

// Translator turns a parsed Dovecot event into the CloudEvent ingest sends.
// The HTTP handler and `dovewarden explain` share it, so explain shows
// exactly what ingest does.
type Translator struct {
	// Username normalises usernames like Dovecot's auth_username_format.
	Username dovecot.UsernameFormat
}

// Translate classifies ev and maps a change to its CloudEvent. host, when
// not empty, replaces the event's hostname as the change's source. It
// returns the drop reason for an event that changes nothing, and an error
// for a change that cannot be a valid CloudEvent.
func (t Translator) Translate(ev *dovecot.Event, host string) (change.Change, cloudevents.Event, dovecot.DropReason, error) {
	c, reason, err := t.Change(ev, host)
	if reason != "" || err != nil {
		return c, cloudevents.Event{}, reason, err
	}
	if c.Time.IsZero() {
		// As the handler does: an event without start_time or end_time
		// changed at the latest when it was received.
		c.Time = time.Now().UTC()
	}
	ce, err := contract.FromChange(c)
	return c, ce, "", err
}

// Change is Translate's first half: the change ev describes, with its
// user normalised and host applied, or why ev is dropped. A username that
// must never reach doveadm (control characters, a leading '-', a '*' mask,
// see doveadm.ValidateUser) is an error: no Dovecot sends one.
func (t Translator) Change(ev *dovecot.Event, host string) (change.Change, dovecot.DropReason, error) {
	c, reason := dovecot.Classify(ev)
	if reason != "" {
		return c, reason, nil
	}
	c.User = t.Username.Apply(c.User)
	if c.User == "" {
		return c, dovecot.DropNoUser, nil
	}
	if err := doveadm.ValidateUser(c.User); err != nil {
		return c, "", err
	}
	if host != "" {
		c.Host = host
	}
	return c, "", nil
}
