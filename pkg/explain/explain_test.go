package explain

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

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

func TestRun_NotJSONStops(t *testing.T) {
	var out bytes.Buffer
	s, err := Run(strings.NewReader(appendLine+"\nthis is not json\n"+appendLine), &out, ingest.Translator{})
	if err == nil || !strings.Contains(err.Error(), "event 2") {
		t.Fatalf("error %v", err)
	}
	if s.Changes != 1 || s.Invalid != 1 {
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
