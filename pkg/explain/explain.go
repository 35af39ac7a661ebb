// Package explain shows, for Dovecot event JSON, what ingest would do with
// each event: the CloudEvent it would send, or why it drops the event.
// Admins use it to check their Dovecot exporter filter.
package explain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/dovewarden/dovewarden-knative/internal/printable"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
)

// Summary counts what Run saw.
type Summary struct {
	Events, Changes, Dropped, Invalid int
}

// ReadError is input Run could not read (a directory, an I/O error), as
// opposed to input that is not Dovecot event JSON: no event is invalid.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "read: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// maxPending bounds what Run reads past the last complete value: an event
// of up to twice dovecot.MaxEventSize is read and refused as too large, a
// longer one (a line of a gigabyte) stops the run instead of being held
// in memory whole.
const maxPending = 2 * dovecot.MaxEventSize

var errTooLarge = fmt.Errorf("more than %d bytes without the end of a JSON value (an event is at most %d)", maxPending, dovecot.MaxEventSize)

// boundedReader fails once more than maxPending bytes were read past the
// decoder's last complete value.
type boundedReader struct {
	r    io.Reader
	read int64
	dec  *json.Decoder
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.read-b.dec.InputOffset() > maxPending {
		return 0, errTooLarge
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	return n, err
}

// WriteError is output Run could not write (a full disk, a closed pipe):
// the events were read, the answer about them was lost.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// errWriter keeps the first error of its writer, so that Run tells a
// failed write from a failed read or an invalid event.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	if err != nil {
		e.err = err
	}
	return n, err
}

// Options is what, beside the event, decides what ingest does with it.
type Options struct {
	Translator ingest.Translator
	// Host is the host query parameter of the exporter URL (?host=NAME),
	// which ingest names instead of the event's hostname; empty: none.
	Host string
	// MaxBody is ingest's --max-body: it answers a larger event 413. 0 is
	// no limit.
	MaxBody int64
}

// Run reads Dovecot events from r (one JSON object, or a stream of objects
// such as one per line) and writes, per event, the CloudEvent as indented
// JSON or a line "dropped: <reason>". An object that is not a valid event
// gets a line "invalid: <error>" and the rest is still read; input that is
// not JSON at all, or a value longer than maxPending, stops the run with
// an error (and counts as invalid); input that cannot be read stops it
// with a *ReadError.
func Run(r io.Reader, w io.Writer, t ingest.Translator) (Summary, error) {
	return RunWith(r, w, Options{Translator: t})
}

// RunWith is Run for an ingest configured as o says. A failed write stops
// the run with a *WriteError.
func RunWith(r io.Reader, w io.Writer, o Options) (Summary, error) {
	var s Summary
	ew := &errWriter{w: w}
	br := &boundedReader{r: r}
	dec := json.NewDecoder(br)
	br.dec = dec
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			return s, nil
		}
		var syntax *json.SyntaxError
		switch {
		case err == nil:
		case errors.As(err, &syntax) || errors.Is(err, io.ErrUnexpectedEOF):
			// What stops the run is one more event, and an invalid one.
			s.Events++
			s.Invalid++
			return s, fmt.Errorf("event %d: not JSON: %w", s.Events, err)
		case errors.Is(err, errTooLarge):
			s.Events++
			s.Invalid++
			return s, fmt.Errorf("event %d: %w", s.Events, err)
		default:
			return s, &ReadError{err}
		}
		s.Events++
		if err := one(raw, ew, o, &s); err != nil {
			if ew.err != nil {
				return s, &WriteError{ew.err}
			}
			return s, err
		}
	}
}

func one(raw []byte, w io.Writer, o Options, s *Summary) error {
	// Dovecot posts each event alone, as compact JSON: that is the body
	// ingest measures.
	var body bytes.Buffer
	if err := json.Compact(&body, raw); err != nil {
		return err
	}
	if o.MaxBody > 0 && int64(body.Len()) > o.MaxBody {
		s.Invalid++
		_, werr := fmt.Fprintf(w, "invalid: an event of %d bytes, over max-body (%d): ingest answers 413 and the change waits for the sweep\n", body.Len(), o.MaxBody)
		return werr
	}
	ev, err := dovecot.Parse(body.Bytes())
	if err != nil {
		s.Invalid++
		_, werr := fmt.Fprintf(w, "invalid: %v\n", err)
		return werr
	}
	// Ingest refuses a host it does not accept first, whatever the event
	// is (400).
	host := o.Host
	if host == "" {
		host = ev.Hostname
	}
	if err := ingest.CheckHost(host); err != nil {
		s.Invalid++
		_, werr := fmt.Fprintf(w, "invalid: %v\n", err)
		return werr
	}
	c, ce, reason, err := o.Translator.Translate(&ev, host)
	if reason != "" {
		s.Dropped++
		_, werr := fmt.Fprintf(w, "dropped: %s (%s %s)\n", reason, printable.String(ev.Name), describe(&ev))
		return werr
	}
	if err != nil {
		s.Invalid++
		_, werr := fmt.Fprintf(w, "invalid: %v\n", err)
		return werr
	}
	out, err := json.Marshal(ce)
	if err != nil {
		return fmt.Errorf("encode CloudEvent %s: %w", c.ID, err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, out, "", "  "); err != nil {
		return err
	}
	pretty.WriteByte('\n')
	s.Changes++
	_, err = w.Write(escapeControls(pretty.Bytes()))
	return err
}

// escapeControls writes the DEL and C1 control characters of indented
// JSON as \u escapes, which JSON allows in the strings they can only be
// in, and encoding/json leaves raw: the event quotes text from outside (a
// sender's Message-ID, a user's mailbox names), and U+009B is CSI to a
// terminal that reads 8-bit controls.
func escapeControls(b []byte) []byte {
	if !bytes.ContainsFunc(b, isC1) {
		return b
	}
	var out bytes.Buffer
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if isC1(r) {
			fmt.Fprintf(&out, `\u%04x`, r)
		} else {
			out.Write(b[:n])
		}
		b = b[n:]
	}
	return out.Bytes()
}

func isC1(r rune) bool { return r >= 0x7f && r <= 0x9f }

// describe names the event's command and user for a dropped line.
func describe(ev *dovecot.Event) string {
	f := ev.Fields
	d := ""
	if f.CmdName != "" {
		d = printable.String(f.CmdName) + " "
	}
	if f.User != "" {
		d += "user=" + printable.String(f.User)
	}
	if f.TaggedReplyState != "" && f.TaggedReplyState != "OK" {
		d += " reply=" + printable.String(f.TaggedReplyState)
	}
	return d
}
