package explain

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/ingest"
)

const (
	appendLine = `{"event":"imap_command_finished","hostname":"mail-a.test","end_time":"2026-11-29T10:00:00Z","categories":["service:imap"],"fields":{"user":"u1","cmd_tag":"a1","cmd_name":"APPEND","mailbox":"INBOX","tagged_reply_state":"OK"}}`
	failedLine = `{"event":"imap_command_finished","hostname":"mail-a.test","fields":{"user":"u1","cmd_name":"CREATE","tagged_reply_state":"BAD"}}`
	syncLine   = `{"event":"mail_expunged","hostname":"mail-a.test","categories":["service:doveadm"],"fields":{"user":"u1"}}`
)

func TestRun_OnePerLine(t *testing.T) {
	in := strings.Join([]string{appendLine, failedLine, syncLine, `{"hostname":"x"}`}, "\n")
	var out bytes.Buffer
	s, err := Run(strings.NewReader(in), &out, ingest.Translator{})
	if err != nil {
		t.Fatal(err)
	}
	if s != (Summary{Events: 4, Changes: 1, Dropped: 2, Invalid: 1}) {
		t.Errorf("summary %+v", s)
	}
	text := out.String()
	for _, want := range []string{
		`"type": "org.dovewarden.mailbox.changed"`, `"subject": "u1"`, `"priority": "high"`,
		"dropped: failed (imap_command_finished CREATE user=u1 reply=BAD)",
		"dropped: doveadm (mail_expunged user=u1)",
		`invalid: missing "event"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
}

func TestRun_PrettyPrintedObjectAndValidJSONOut(t *testing.T) {
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, []byte(appendLine), "", "    "); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	s, err := Run(&pretty, &out, ingest.Translator{})
	if err != nil || s.Changes != 1 {
		t.Fatalf("%+v %v", s, err)
	}
	var ce map[string]any
	if err := json.Unmarshal(out.Bytes(), &ce); err != nil {
		t.Fatalf("output is not one JSON CloudEvent: %v\n%s", err, out.String())
	}
	if ce["specversion"] != "1.0" || ce["source"] != "mail-a.test" {
		t.Errorf("CloudEvent %v", ce)
	}
}

// TestRun_AnEventWithoutTimeGetsOne: ingest times an event that has
// neither start_time nor end_time by when it received it; explain, which
// shows what ingest sends, gives its CloudEvent a time too.
func TestRun_AnEventWithoutTimeGetsOne(t *testing.T) {
	line := strings.Replace(appendLine, `"end_time":"2026-11-29T10:00:00Z",`, "", 1)
	before := time.Now().Add(-time.Second)
	var out bytes.Buffer
	if s, err := Run(strings.NewReader(line), &out, ingest.Translator{}); err != nil || s.Changes != 1 {
		t.Fatalf("%+v %v", s, err)
	}
	var ce struct{ Time time.Time }
	if err := json.Unmarshal(out.Bytes(), &ce); err != nil {
		t.Fatal(err)
	}
	if ce.Time.Before(before) || ce.Time.After(time.Now()) {
		t.Errorf("time %v, want when it was explained:\n%s", ce.Time, out.String())
	}
}

func TestRun_NotJSONStops(t *testing.T) {
	var out bytes.Buffer
	s, err := Run(strings.NewReader(appendLine+"\nthis is not json\n"+appendLine), &out, ingest.Translator{})
	if err == nil || !strings.Contains(err.Error(), "event 2") {
		t.Fatalf("error %v", err)
	}
	// The summary counts the value that stopped it among the events.
	if s != (Summary{Events: 2, Changes: 1, Invalid: 1}) {
		t.Errorf("summary %+v", s)
	}
}

func TestRun_UsernameFormat(t *testing.T) {
	uf, err := dovecot.ParseUsernameFormat("%Ln")
	if err != nil {
		t.Fatal(err)
	}
	line := `{"event":"mail_delivery_finished","hostname":"h","fields":{"user":"U1@mail-a.test","rcpt_to":"U1@mail-a.test"}}`
	var out bytes.Buffer
	if _, err := Run(strings.NewReader(line), &out, ingest.Translator{Username: uf}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"subject": "u1"`) {
		t.Errorf("username not normalised:\n%s", out.String())
	}
}

// endless is the rest of a string that does not end (up to 64 MiB): it
// counts what was read.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	if e.n > 64<<20 {
		return 0, io.EOF
	}
	for i := range p {
		p[i] = 'a'
	}
	e.n += int64(len(p))
	return len(p), nil
}

// TestRun_HugeValueStopsWithoutReadingItAll: a value longer than twice an
// event's limit stops the run as invalid input, without holding it all in
// memory; one just over the limit is refused and the rest still read.
func TestRun_HugeValueStopsWithoutReadingItAll(t *testing.T) {
	src := &endless{}
	r := io.MultiReader(strings.NewReader(`{"event":"`), src)
	s, err := Run(r, io.Discard, ingest.Translator{})
	if err == nil || !strings.Contains(err.Error(), "without the end of a JSON value") || s != (Summary{Events: 1, Invalid: 1}) {
		t.Errorf("summary %+v, err %v", s, err)
	}
	if src.n > 4*dovecot.MaxEventSize {
		t.Errorf("read %d bytes of one value", src.n)
	}

	big := `{"event":"` + strings.Repeat("a", dovecot.MaxEventSize) + `"}`
	var out bytes.Buffer
	s, err = Run(strings.NewReader(big+"\n"+appendLine), &out, ingest.Translator{})
	if err != nil || s != (Summary{Events: 2, Changes: 1, Invalid: 1}) {
		t.Errorf("summary %+v, err %v\n%s", s, err, out.String())
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("is a directory") }

// TestRun_ReadErrorIsNoInvalidEvent: input that cannot be read is a
// ReadError, not "not JSON", and no event is counted invalid.
func TestRun_ReadErrorIsNoInvalidEvent(t *testing.T) {
	s, err := Run(io.MultiReader(strings.NewReader(appendLine+"\n"), failingReader{}), io.Discard, ingest.Translator{})
	var re *ReadError
	if !errors.As(err, &re) || strings.Contains(err.Error(), "not JSON") || s != (Summary{Events: 1, Changes: 1}) {
		t.Errorf("summary %+v, err %v", s, err)
	}
}

// TestRun_AHostIngestRefusesIsInvalid: ingest answers 400 to an event
// whose host name it refuses (one that cannot be a CloudEvent's source
// or a metric label, or none), before it looks at the event's kind:
// explain, which shows what ingest does, counts it invalid rather than
// showing a CloudEvent or a drop ingest would never make.
func TestRun_AHostIngestRefusesIsInvalid(t *testing.T) {
	for _, tc := range []struct{ name, line, want string }{
		{"a space", strings.Replace(appendLine, `"mail-a.test"`, `"mail a.test"`, 1), `invalid: host "mail a.test"`},
		{"not ASCII", strings.Replace(appendLine, `"mail-a.test"`, `"mäil.test"`, 1), `invalid: host "mäil.test"`},
		{"dropped otherwise", strings.Replace(failedLine, `"mail-a.test"`, `"mail/a"`, 1), `invalid: host "mail/a"`},
		{"none", strings.Replace(appendLine, `"hostname":"mail-a.test",`, "", 1), `invalid: no host`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			s, err := Run(strings.NewReader(tc.line), &out, ingest.Translator{})
			if err != nil {
				t.Fatal(err)
			}
			if s != (Summary{Events: 1, Invalid: 1}) || !strings.HasPrefix(out.String(), tc.want) {
				t.Errorf("summary %+v, output:\n%s\nwant one invalid event, %q", s, out.String(), tc.want)
			}
		})
	}
}

// TestRunFor_TheExporterURLsHost: with ?host=NAME in the exporter URL,
// ingest names that host, whatever the events' hostname; so does explain
// given the same host.
func TestRunWith_TheExporterURLsHost(t *testing.T) {
	line := strings.Replace(appendLine, `"mail-a.test"`, `"10.0.0.1:8080"`, 1)
	var out bytes.Buffer
	s, err := RunWith(strings.NewReader(line), &out, Options{Host: "mail-a"})
	if err != nil || s != (Summary{Events: 1, Changes: 1}) {
		t.Fatalf("%+v %v\n%s", s, err, out.String())
	}
	var ce map[string]any
	if err := json.Unmarshal(out.Bytes(), &ce); err != nil || ce["source"] != "mail-a" {
		t.Errorf("CloudEvent %v, %v: want source mail-a", ce, err)
	}
	out.Reset()
	if s, _ := RunWith(strings.NewReader(line), &out, Options{Host: "bad host"}); s.Invalid != 1 {
		t.Errorf("a host ingest refuses: %+v\n%s", s, out.String())
	}
}

// TestRun_ADroppedLineCannotDriveTheTerminal: the fields a dropped line
// quotes from the event (its name, command and user) are shown with
// their control characters and bytes that are not UTF-8 escaped, as
// `dovewarden status` shows doveadm's errors: an ESC sequence in a
// user name would otherwise drive the terminal explain prints to.
func TestRun_ADroppedLineCannotDriveTheTerminal(t *testing.T) {
	line := `{"event":"imap_command_finished\u009b","hostname":"mail-a.test","fields":{"user":"u1\u001b[2J",` +
		`"cmd_name":"CREATE\u001b]0;x\u0007","tagged_reply_state":"BAD\r"}}`
	var out bytes.Buffer
	s, err := Run(strings.NewReader(line), &out, ingest.Translator{})
	if err != nil || s.Dropped != 1 {
		t.Fatalf("%+v %v\n%s", s, err, out.String())
	}
	text := strings.TrimSuffix(out.String(), "\n")
	if strings.ContainsFunc(text, func(r rune) bool { return r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 }) {
		t.Errorf("the dropped line holds control characters: %q", text)
	}
	for _, want := range []string{`imap_command_finished\u009b`, `CREATE\x1b]0;x\a`, `user=u1\x1b[2J`, `reply=BAD\r`} {
		if !strings.Contains(text, want) {
			t.Errorf("the dropped line %q lacks %q", text, want)
		}
	}
}

// An event over ingest's --max-body is answered 413 there: explain calls
// it invalid, measured as Dovecot posts it (compact), not as a capture
// laid it out.
func TestRunWith_AnEventOverMaxBodyIsInvalid(t *testing.T) {
	big := strings.Replace(appendLine, `"mailbox":"INBOX"`, `"mailbox":"`+strings.Repeat("x", 3500)+`"`, 1)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, []byte(big), "", strings.Repeat(" ", 100)); err != nil {
		t.Fatal(err)
	}
	if pretty.Len() <= 4096 || len(big) > 4096 {
		t.Fatalf("the laid-out event is %d bytes, the compact one %d: the test wants them either side of 4096", pretty.Len(), len(big))
	}
	var out bytes.Buffer
	if s, err := RunWith(&pretty, &out, Options{MaxBody: 4096}); err != nil || s.Changes != 1 || s.Invalid != 0 {
		t.Errorf("a compact event of %d bytes under max-body 4096: %+v %v\n%s", len(big), s, err, out.String())
	}
	out.Reset()
	s, err := RunWith(strings.NewReader(big), &out, Options{MaxBody: 1024})
	if err != nil || s != (Summary{Events: 1, Invalid: 1}) {
		t.Errorf("summary %+v, %v", s, err)
	}
	if want := "over max-body (1024): ingest answers 413"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
}

// The CloudEvent quotes text from outside (a sender's Message-ID, a
// user's mailbox names); encoding/json writes DEL and the C1 controls
// raw, and U+009B is CSI to a terminal that reads 8-bit controls.
func TestRun_TheCloudEventCannotDriveTheTerminal(t *testing.T) {
	line := strings.Replace(appendLine, `"mailbox":"INBOX"`, `"mailbox":"a\u009b2J\u007fb\u0085c"`, 1)
	var out bytes.Buffer
	if s, err := Run(strings.NewReader(line), &out, ingest.Translator{}); err != nil || s.Changes != 1 {
		t.Fatalf("%+v %v", s, err)
	}
	if strings.ContainsFunc(out.String(), func(r rune) bool { return r >= 0x7f && r <= 0x9f }) {
		t.Errorf("raw control characters in the output:\n%q", out.String())
	}
	var ce struct {
		Data struct {
			Mailbox string `json:"mailbox"`
		} `json:"data"`
	}
	if err := json.Unmarshal(out.Bytes(), &ce); err != nil {
		t.Fatalf("the output is no longer JSON: %v\n%s", err, out.String())
	}
	if ce.Data.Mailbox != "a\u009b2J\u007fb\u0085c" {
		t.Errorf("the escaped output decodes to mailbox %q", ce.Data.Mailbox)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// A write that fails is the output's fault, not the events': a
// *WriteError, with the event counted as what it was.
func TestRun_AFailedWriteIsAWriteError(t *testing.T) {
	for _, line := range []string{appendLine, failedLine, `{"hostname":"x"}`} {
		s, err := Run(strings.NewReader(line), failingWriter{}, ingest.Translator{})
		var we *WriteError
		if !errors.As(err, &we) {
			t.Errorf("%s: error %v (%T), want a *WriteError", line, err, err)
		}
		if s.Events != 1 {
			t.Errorf("%s: summary %+v", line, s)
		}
	}
}
