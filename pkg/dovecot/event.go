// Package dovecot understands the JSON that Dovecot's event exporter posts
// (Dovecot 2.3 and 2.4) and decides which events changed a user's mail.
package dovecot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	gojson "github.com/goccy/go-json"
)

// Event is one exported Dovecot event. Only the fields replication needs are
// decoded; unknown fields are ignored, so new Dovecot versions do not break
// ingest.
type Event struct {
	Name       string    `json:"event"`
	Hostname   string    `json:"hostname"`
	StartTime  Timestamp `json:"start_time"`
	EndTime    Timestamp `json:"end_time"`
	Categories []string  `json:"categories"`
	Fields     Fields    `json:"fields"`
}

// Fields are the event fields replication uses. Dovecot 2.3 and 2.4 agree on
// these names; where they differ (byte counters, cmd_input_name) nothing
// here depends on them.
type Fields struct {
	User             string `json:"user"`
	Session          string `json:"session"`
	CmdTag           string `json:"cmd_tag"`
	CmdName          string `json:"cmd_name"`
	CmdArgs          string `json:"cmd_args"`
	TaggedReplyState string `json:"tagged_reply_state"`
	// ReplyState is the POP3 reply (2.4 pop3_command_finished).
	ReplyState string `json:"reply_state"`
	Mailbox    string `json:"mailbox"`
	OldMailbox string `json:"old_mailbox"`
	NewMailbox string `json:"new_mailbox"`
	MessageID  string `json:"message_id"`
	// Error is set on failed deliveries and other failed operations.
	Error string `json:"error"`
	// ReasonCode names what the process was doing: "doveadm:cmd_expunge"
	// for a doveadm command's session.
	ReasonCode []string `json:"reason_code"`
}

// MaxEventSize bounds what Parse accepts: the largest ingest --max-body
// allows, which is usually lower.
const MaxEventSize = 16 << 20

// Parse decodes exactly one exporter JSON object. Trailing data after the
// object is an error: Dovecot posts one event per request.
func Parse(data []byte) (Event, error) {
	var ev Event
	if len(data) > MaxEventSize {
		return ev, fmt.Errorf("event of %d bytes exceeds %d", len(data), MaxEventSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return ev, errors.New("empty body: expected one JSON object")
	}
	// Unmarshal rejects trailing data, which is what we want: Dovecot
	// posts exactly one object per request.
	if err := unmarshal(data, &ev); err != nil {
		return Event{}, describe(err)
	}
	if ev.Name == "" {
		return ev, errors.New(`missing "event": not a Dovecot exporter event`)
	}
	return ev, nil
}

// unmarshal decodes data into ev exactly as encoding/json's Unmarshal does,
// at a fraction of its cost. github.com/goccy/go-json decodes the body: it
// decodes values as encoding/json does (its tests and
// FuzzParseMatchesEncodingJSON check that for Event). Whatever it does not
// accept is decoded again by encoding/json, so encoding/json decides what is
// rejected and writes every error: a request Dovecot should not have sent
// costs the two decodings, a good one only the fast one.
func unmarshal(data []byte, ev *Event) error {
	if fastUnmarshal(data, ev) {
		return nil
	}
	*ev = Event{}
	return json.Unmarshal(data, ev)
}

// fastUnmarshal reports whether the fast decoder decoded data into ev. A
// panic in it is taken as a refusal: encoding/json has the last word.
func fastUnmarshal(data []byte, ev *Event) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	// UnmarshalOf decodes into a copy of *ev, so ev stays on the caller's
	// stack. Strings are copied out of data, which the caller may reuse.
	return gojson.UnmarshalOf(data, ev) == nil
}

// describe turns decoder errors into messages that point at the problem.
func describe(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("invalid JSON at byte %d: %w", syn.Offset, err)
	case errors.As(err, &typ):
		got := jsonValue(typ.Value)
		if typ.Field == "" {
			return fmt.Errorf("want a JSON object (one Dovecot event), got %s", got)
		}
		return fmt.Errorf("field %q: want %s, got %s", typ.Field, jsonKind(typ.Type), got)
	}
	return fmt.Errorf("invalid JSON: %w", err)
}

// jsonKind names what JSON a Go type takes, in words for whoever posted
// it, never the Go type's name.
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "another JSON value"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(jsonKind(t.Elem()), "a "), "an ") + "s"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "another JSON value"
}

// jsonValue is encoding/json's UnmarshalTypeError.Value ("array",
// "number 1.5", "string") with an article.
func jsonValue(v string) string {
	switch {
	case v == "":
		return "another JSON value"
	case strings.HasPrefix(v, "array"), strings.HasPrefix(v, "object"):
		return "an " + v
	}
	return "a " + v
}

// Timestamp is an event time. Dovecot writes RFC 3339 strings with
// format_args=time-rfc3339 (2.3) or time_format=rfc3339 (2.4), and seconds
// since the epoch as a number otherwise; both are accepted.
type Timestamp struct{ time.Time }

// UnmarshalJSON accepts an RFC 3339 string, a number of seconds since the
// epoch (with fraction), or null.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		s, ok := plainString(b)
		if !ok {
			if err := json.Unmarshal(b, &s); err != nil {
				return err
			}
		}
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return fmt.Errorf("time %q is not RFC 3339: %w", s, err)
		}
		t.Time = v.UTC()
		return nil
	}
	// ParseFloat takes more than JSON numbers ("0x1p4", "1_0", ".5"): the
	// value must be a JSON number whichever decoder handed it over.
	if len(b) == 0 || b[0] != '-' && (b[0] < '0' || b[0] > '9') || !json.Valid(b) {
		return fmt.Errorf("time %s is neither RFC 3339 nor seconds since the epoch", b)
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1e11 {
		return fmt.Errorf("time %s is neither RFC 3339 nor seconds since the epoch", b)
	}
	sec, frac := math.Modf(f)
	t.Time = time.Unix(int64(sec), int64(math.Round(frac*1e6))*1e3).UTC()
	return nil
}

// plainString returns the JSON string b without its quotes when it has
// only printable ASCII and no escape, which is what it then means: every
// RFC 3339 time Dovecot writes. Anything else is left to encoding/json.
func plainString(b []byte) (string, bool) {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return "", false
	}
	b = b[1 : len(b)-1]
	for _, c := range b {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(b), true
}

// HasCategory reports whether the event carries category c.
func (ev *Event) HasCategory(c string) bool {
	for _, have := range ev.Categories {
		if have == c {
			return true
		}
	}
	return false
}
