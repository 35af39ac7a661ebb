package broker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// Phases of a Held event, as the spool file names them.
const (
	PhaseDeliver    = "deliver"
	PhaseReply      = "reply"
	PhaseDeadLetter = "dead-letter"
)

// Held is an event a lane still held when Shutdown stopped it, and what
// its Trigger had left to do with it. Phase deliver: deliver it to the
// Trigger's subscriber (its delivery never succeeded); reply: publish
// Reply, the subscriber's answer to it, into the broker; dead-letter:
// deliver it, with the knativeerror* extensions, to the Trigger's
// dead-letter sink. TTL is its knativebrokerttl as the lane kept it.
// Header are the pass-through headers the phase sends (PassThroughHeaders:
// those that came with the event, or, for reply and a dead-letter
// delivery after a reply failed, those of the subscriber's response; nil
// for an event published in-process) and Namespace what the subscriber
// or sink gets as Kn-Namespace.
type Held struct {
	Trigger   string
	Phase     string
	TTL       int32
	Event     cloudevents.Event
	Reply     *cloudevents.Event
	Header    http.Header
	Namespace string
}

func (t *task) held(trigger string) Held {
	h := Held{Trigger: trigger, Phase: PhaseDeliver, TTL: t.ttl, Event: t.ev, Header: t.hdr, Namespace: t.ns}
	switch t.phase {
	case phaseReply:
		h.Phase, h.Reply = PhaseReply, t.reply
	case phaseDeadLetter:
		h.Phase, h.Event = PhaseDeadLetter, t.dead
	}
	return h
}

// ErrNotRestored: Restore could not give a held event back to its Trigger
// (the Trigger is gone, disabled or has no dead-letter sink now, or its
// lane is full).
var ErrNotRestored = errors.New("not restored")

// ErrSpoolInUse: another running process holds the spool file's lock
// (LockSpool).
var ErrSpoolInUse = errors.New("another running process uses this spool file")

// Restore gives an event Shutdown returned back to its Trigger's lane, in
// the phase it was in: delivered to the subscriber or the dead-letter
// sink, or its reply published into the broker. Retries start over. Its
// headers are selected again (PassThroughHeaders), and an empty Namespace
// is Options.Namespace.
func (b *Broker) Restore(h Held) error {
	var l *lane
	for _, c := range b.lanes {
		if c.tr.Name == h.Trigger {
			l = c
		}
	}
	ns := h.Namespace
	if ns == "" {
		ns = b.opts.Namespace
	}
	t := &task{ev: h.Event, ttl: h.TTL, hdr: PassThroughHeaders(h.Header), ns: ns}
	switch {
	case !validNamespace(ns):
		return fmt.Errorf("%w: %s: namespace %q: not a Kubernetes namespace name", ErrNotRestored, h.Event.ID(), ns)
	case l == nil:
		return fmt.Errorf("%w: %s: Trigger %q is not an enabled Trigger now", ErrNotRestored, h.Event.ID(), h.Trigger)
	case h.Phase == PhaseDeliver:
	case h.Phase == PhaseReply && h.Reply != nil:
		t.phase, t.reply = phaseReply, h.Reply
	case h.Phase == PhaseDeadLetter && l.dls != nil:
		t.phase, t.dead = phaseDeadLetter, h.Event
	case h.Phase == PhaseDeadLetter:
		return fmt.Errorf("%w: %s: Trigger %q has no dead-letter sink now", ErrNotRestored, h.Event.ID(), h.Trigger)
	default:
		return fmt.Errorf("%w: %s: phase %q (reply %t)", ErrNotRestored, h.Event.ID(), h.Phase, h.Reply != nil)
	}
	if err := h.Event.Validate(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotRestored, h.Event.ID(), err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	t.size = eventSize(h.Event)
	if h.Reply != nil {
		t.size += eventSize(*h.Reply)
	}
	if full := l.reserve(t.size); full != nil {
		b.m.rejected.WithLabelValues(l.tr.Name).Inc()
		return fmt.Errorf("%w: %s: %w", ErrNotRestored, h.Event.ID(), full)
	}
	l.enqueue(t) // never blocks: the place is reserved
	b.m.published.WithLabelValues(sourceRestored).Inc()
	return nil
}

// spoolLine is one line of a spool file. EventBase64 and ReplyBase64 say
// that the event's or the reply's data is in data_base64 for the file
// only: it came as raw bytes and goes back as such.
type spoolLine struct {
	Trigger     string          `json:"trigger"`
	Phase       string          `json:"phase"`
	TTL         int32           `json:"ttl"`
	Event       json.RawMessage `json:"event"`
	EventBase64 bool            `json:"event_base64,omitempty"`
	Reply       json.RawMessage `json:"reply,omitempty"`
	ReplyBase64 bool            `json:"reply_base64,omitempty"`
	Headers     http.Header     `json:"headers,omitempty"`
	Namespace   string          `json:"namespace,omitempty"`
}

// SpoolLineLimit bounds one line of a spool file for a broker whose
// events' bodies are at most maxBody: an event and its reply, each in the
// structured JSON format, where data that is not JSON is a JSON string
// (a control character is 6 bytes there), and its pass-through headers.
func SpoolLineLimit(maxBody int64) int {
	return int(2*6*maxBody + 6*MaxPassThroughBytes + 64<<10)
}

// EncodeSpool writes held events to w, one JSON object a line: the
// Trigger, the phase, the TTL and the event in the CloudEvents structured
// JSON format. An event's data that this format would not give back byte
// for byte (data said to be JSON that is not, or not compact JSON) is
// written as data_base64. A held event that cannot be written at all is
// left out, and given to bad if bad is not nil; the error is one of
// writing to w.
func EncodeSpool(w io.Writer, held []Held, bad func(Held, error)) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	var scratch bytes.Buffer
	for _, h := range held {
		sl, err := encodeSpoolLine(h, &scratch)
		if err != nil {
			if bad != nil {
				bad(h, err)
			}
			continue
		}
		if err := enc.Encode(sl); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func encodeSpoolLine(h Held, scratch *bytes.Buffer) (spoolLine, error) {
	sl := spoolLine{Trigger: h.Trigger, Phase: h.Phase, TTL: h.TTL, Headers: h.Header, Namespace: h.Namespace}
	var err error
	if sl.Event, sl.EventBase64, err = encodeEvent(h.Event, scratch); err != nil {
		return sl, fmt.Errorf("event %s: %w", h.Event.ID(), err)
	}
	if h.Reply != nil {
		if sl.Reply, sl.ReplyBase64, err = encodeEvent(*h.Reply, scratch); err != nil {
			return sl, fmt.Errorf("reply %s: %w", h.Reply.ID(), err)
		}
	}
	return sl, nil
}

// encodeEvent writes ev in the structured JSON format. When that would
// not give its data back byte for byte (a binary-mode POST can carry any
// bytes as data, whatever its Content-Type says), the data is written as
// data_base64 instead, and dataBase64 is true. scratch is a buffer to
// reuse.
func encodeEvent(ev cloudevents.Event, scratch *bytes.Buffer) (raw json.RawMessage, dataBase64 bool, err error) {
	raw, err = json.Marshal(ev)
	if ev.DataBase64 || ev.DataEncoded == nil {
		return raw, false, err
	}
	if err == nil && keepsData(ev, raw, scratch) {
		return raw, false, nil
	}
	ev.DataBase64 = true // ev is a copy: the caller's event is unchanged
	if raw, err = json.Marshal(ev); err != nil {
		return nil, false, err
	}
	return raw, true, nil
}

// keepsData reports whether raw, ev in the structured JSON format, gives
// back ev's data byte for byte. Data of a JSON media type is written as it
// is, then compacted with <, > and & escaped by encoding/json: it comes
// back whole if it is valid JSON in that form already. Anything else
// (another media type, or one sdk-go reads otherwise than it writes, such
// as "Application/JSON") is read back to see.
func keepsData(ev cloudevents.Event, raw []byte, scratch *bytes.Buffer) bool {
	data := ev.DataEncoded
	switch ev.DataMediaType() {
	case cloudevents.ApplicationJSON, "text/json", cloudevents.ApplicationCloudEventsJSON,
		cloudevents.ApplicationCloudEventsBatchJSON, "":
		if bytes.ContainsAny(data, "<>&\u2028\u2029") {
			return false // escaped
		}
		scratch.Reset()
		return json.Compact(scratch, data) == nil && bytes.Equal(scratch.Bytes(), data)
	}
	back := cloudevents.NewEvent()
	return json.Unmarshal(raw, &back) == nil && bytes.Equal(back.DataEncoded, data)
}

// DecodeSpool reads what EncodeSpool wrote, a line at a time: it calls
// held with each held event, and bad with each line that is not one
// (named by its number). A line longer than maxLine bytes is one of those:
// it is read to its end without being kept, so that no more than maxLine
// bytes of it are in memory, and the lines after it are read. The error
// is one of reading, after which the rest of r is not read.
func DecodeSpool(r io.Reader, maxLine int, held func(Held), bad func(error)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	for n := 1; ; n++ {
		line, tooLong, err := readSpoolLine(br, maxLine, buf[:0])
		buf = line
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("line %d: %w", n, err)
		}
		last := err != nil
		switch line = bytes.TrimSpace(line); {
		case tooLong:
			bad(fmt.Errorf("line %d: longer than %d bytes: %w", n, maxLine, bufio.ErrTooLong))
		case len(line) > 0:
			h, derr := decodeSpoolLine(line)
			if derr != nil {
				bad(fmt.Errorf("line %d: %w", n, derr))
			} else {
				held(h)
			}
		}
		if last {
			return nil
		}
	}
}

// readSpoolLine reads one line of br, without its newline, into buf. A
// line longer than maxLine is read to its end but not kept: tooLong. err
// is io.EOF when the line was the last one (it may be empty).
func readSpoolLine(br *bufio.Reader, maxLine int, buf []byte) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		chunk = bytes.TrimSuffix(chunk, []byte("\n"))
		if !tooLong {
			if len(buf)+len(chunk) > maxLine {
				tooLong, buf = true, buf[:0]
			} else {
				buf = append(buf, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return buf, tooLong, err
	}
}

func decodeSpoolLine(line []byte) (Held, error) {
	var sl spoolLine
	if err := json.Unmarshal(line, &sl); err != nil {
		return Held{}, err
	}
	switch {
	case sl.Trigger == "":
		return Held{}, errors.New("no trigger")
	case sl.Phase != PhaseDeliver && sl.Phase != PhaseReply && sl.Phase != PhaseDeadLetter:
		return Held{}, fmt.Errorf("phase %q: want %s, %s or %s", sl.Phase, PhaseDeliver, PhaseReply, PhaseDeadLetter)
	case sl.TTL < 0:
		return Held{}, fmt.Errorf("ttl %d: negative", sl.TTL)
	case (sl.Phase == PhaseReply) != (len(sl.Reply) > 0):
		return Held{}, fmt.Errorf("phase %s with reply %t: a reply goes with phase %s only, and always", sl.Phase, len(sl.Reply) > 0, PhaseReply)
	}
	h := Held{Trigger: sl.Trigger, Phase: sl.Phase, TTL: sl.TTL, Header: sl.Headers, Namespace: sl.Namespace}
	var err error
	if h.Event, err = decodeEvent(sl.Event, sl.EventBase64); err != nil {
		return Held{}, fmt.Errorf("event: %w", err)
	}
	if len(sl.Reply) > 0 {
		r, err := decodeEvent(sl.Reply, sl.ReplyBase64)
		if err != nil {
			return Held{}, fmt.Errorf("reply: %w", err)
		}
		h.Reply = &r
	}
	return h, nil
}

// decodeEvent reads an event encodeEvent wrote; dataBase64 is what it
// returned.
func decodeEvent(raw json.RawMessage, dataBase64 bool) (cloudevents.Event, error) {
	ev := cloudevents.NewEvent()
	if len(raw) == 0 {
		return ev, errors.New("missing")
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		return ev, err
	}
	if dataBase64 {
		ev.DataBase64 = false // in base64 for the file only
	}
	for k := range ev.Extensions() {
		if err := checkExtensionName(k); err != nil {
			return ev, err
		}
	}
	return ev, ev.Validate()
}

// SaveSpool writes held events to the spool file at path, replacing it
// whole (a new file renamed over it, synced to disk), readable by its
// owner only. With nothing held, it removes the file. An event that
// cannot be written is logged, counted and left out; the others are
// saved.
func (b *Broker) SaveSpool(path string, held []Held) error {
	if len(held) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a failure; gone by then otherwise
	notSaved := 0
	err = EncodeSpool(f, held, func(h Held, err error) {
		notSaved++
		b.log.Error("spool file: event left out, it cannot be written", "file", path, "trigger", h.Trigger, "phase", h.Phase,
			"id", h.Event.ID(), "type", h.Event.Type(), "subject", h.Event.Subject(), "err", err)
	})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename on disk; not every file system syncs folders
		d.Close()
	}
	b.m.spooled.WithLabelValues(spoolSaved).Add(float64(len(held) - notSaved))
	b.m.spooled.WithLabelValues(spoolNotSaved).Add(float64(notSaved))
	b.log.Info("events the broker held saved to the spool file", "file", path, "events", len(held)-notSaved, "of", len(held))
	return nil
}

// RestoreSpool gives the events of the spool file at path back to their
// Triggers (Restore); no file is nothing to do. It opens the file, renames
// it to path.restoring, and removes that once every event is back in its
// lane: a start after a crash in between finds path.restoring and
// restores it again, so its events are delivered at least once (a second
// time, some of them). Such a leftover stays on disk until the newer file,
// if any, is open and takes its name, so a start refused on the way loses
// none of it. What cannot be restored is logged and counted, and the file
// is then kept as path.kept-TIME, so nothing is dropped without a trace.
// It must run before the broker takes events, so that held events are
// first in their lanes. The error is one of opening or renaming a file;
// every event restored before it is still on disk (in a file the next
// start restores, or in a kept one): the caller should not start.
func (b *Broker) RestoreSpool(path string) (restored int, err error) {
	taken := path + ".restoring"
	leftover, stuck := false, error(nil)
	if f, err := os.Open(taken); err == nil {
		b.log.Warn("spool file left by a start that ended while restoring it: restoring it again", "file", taken)
		restored, leftover, stuck = b.restoreFrom(path, taken, f)
		f.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if leftover {
			b.removeRestored(taken)
		}
		return restored, nil
	} else if err != nil {
		return restored, err
	}
	defer f.Close()
	if stuck != nil {
		// The leftover, not all restored, could not be kept under
		// another name: the newer file must not replace it.
		return restored, stuck
	}
	if err := os.Rename(path, taken); err != nil {
		return restored, err
	}
	// Not kept under another name (err): the next start restores it again.
	n, all, _ := b.restoreFrom(path, taken, f)
	if all {
		b.removeRestored(taken)
	}
	return restored + n, nil
}

// removeRestored removes the spool file taken, every event of which is
// back in its lane.
func (b *Broker) removeRestored(taken string) {
	if err := os.Remove(taken); err != nil {
		b.log.Error("spool file restored but not removed: the next start restores it again", "file", taken, "err", err)
	}
}

// restoreFrom restores the spool file path, renamed to taken and open as
// f. It reports whether every line was restored; if not, it renames taken
// to path.kept-TIME, and the error is that of the rename (taken is then
// still there).
func (b *Broker) restoreFrom(path, taken string, f *os.File) (restored int, all bool, err error) {
	// A line at a time: what is read goes to its lane, so no more of the
	// file is in memory at once than the lanes take.
	failed, total := 0, 0
	rerr := DecodeSpool(f, SpoolLineLimit(b.opts.MaxBody), func(h Held) {
		total++
		if err := b.Restore(h); err != nil {
			failed++
			b.m.spooled.WithLabelValues(spoolNotRestored).Inc()
			b.log.Warn("spool file: event not restored", "file", path, "trigger", h.Trigger, "phase", h.Phase,
				"id", h.Event.ID(), "type", h.Event.Type(), "subject", h.Event.Subject(), "err", err)
			return
		}
		restored++
	}, func(err error) {
		failed++
		b.m.spooled.WithLabelValues(spoolInvalid).Inc()
		b.log.Warn("spool file: a line is not a held event", "file", path, "err", err)
	})
	if rerr != nil {
		failed++
		b.m.spooled.WithLabelValues(spoolInvalid).Inc()
		b.log.Warn("spool file: not read to its end", "file", path, "err", rerr)
	}
	b.m.spooled.WithLabelValues(spoolRestored).Add(float64(restored))
	b.log.Info("events restored from the spool file", "file", path, "events", restored, "of", total)
	if failed == 0 {
		return restored, true, nil
	}
	// Two files (a leftover and the newer one) may be kept in the same
	// millisecond: a name that is taken gets a number.
	ts := time.Now().UTC().Format("20060102T150405.000Z")
	kept := path + ".kept-" + ts
	for i := 2; ; i++ {
		if _, err := os.Lstat(kept); err != nil {
			break
		}
		kept = fmt.Sprintf("%s.kept-%s-%d", path, ts, i)
	}
	if err := os.Rename(taken, kept); err != nil {
		b.log.Error("spool file with lines not restored: not renamed; the next start restores it again", "file", taken, "err", err)
		return restored, false, err
	}
	b.log.Warn("spool file kept: some of its lines were not restored", "file", kept, "lines", failed)
	return restored, false, nil
}
