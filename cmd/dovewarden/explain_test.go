package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"
)

// An event over ingest's --max-body: ingest answers 413 (the change waits
// for the sweep), and explain, with the same limit by default, says so
// and exits 1 instead of showing a CloudEvent.
func TestExplain_AgreesWithIngestOnAnEventOverMaxBody(t *testing.T) {
	ev := strings.Replace(deliveryEvent, `"message_id":"<m@test>"`, `"message_id":"<m@test>","subject":"`+strings.Repeat("x", 300<<10)+`"`, 1)

	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}))
	defer broker.Close()
	ienv, _, istderr := testEnv(map[string]string{"K_SINK": broker.URL}, "")
	base, _ := serve(t, ienv, istderr, "ingest", "--listen", "127.0.0.1:0")
	resp, err := http.Post(base+"/events", "application/json", strings.NewReader(ev))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("ingest answered %d; the test wants an event it answers 413", resp.StatusCode)
	}

	env, stdout, stderr := testEnv(nil, ev)
	err = run(context.Background(), env, []string{"explain"})
	if strings.Contains(stdout.String(), `"specversion"`) || !strings.Contains(stdout.String(), "ingest answers 413") {
		t.Errorf("explain's answer to an event ingest refuses with 413:\n%.300s\n%s", stdout.String(), stderr.String())
	}
	if code := exitCode(err); code != 1 {
		t.Errorf("exit %d (%v), want 1: an invalid event", code, err)
	}

	// A larger limit, as ingest's --max-body would be: the change.
	env, stdout, _ = testEnv(nil, ev)
	if err := run(context.Background(), env, []string{"explain", "--max-body", "1048576"}); err != nil || !strings.Contains(stdout.String(), `"specversion"`) {
		t.Errorf("with --max-body 1048576: %v\n%.300s", err, stdout.String())
	}
}

type failingStdout struct{}

func (failingStdout) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// A stdout that cannot be written is not an invalid event: exit 2, not
// the 1 a script would blame the events for.
func TestExplain_AFailedWriteExits2(t *testing.T) {
	env, _, stderr := testEnv(nil, deliveryEvent)
	env.stdout = failingStdout{}
	err := run(context.Background(), env, []string{"explain"})
	if code := exitCode(err); code != 2 {
		t.Errorf("exit %d (%v), want 2; stderr: %s", code, err, stderr)
	}
}

// TestDocs_MailboxChangedExampleIsWhatExplainPrints: docs/events.md's
// example of mailbox.changed is, as it says, what `dovewarden explain`
// prints for the UID MOVE it describes: the same attributes, the same
// id (derived from the Dovecot event) and the same data.
func TestDocs_MailboxChangedExampleIsWhatExplainPrints(t *testing.T) {
	doc, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## `org.dovewarden.mailbox.changed`\n")
	if !ok {
		t.Fatal("docs/events.md has no mailbox.changed section")
	}
	_, example, ok := strings.Cut(section, "### Example\n")
	if !ok || !strings.Contains(example, `"cmd_tag":"a7","cmd_args":"41:42 Archive"`) {
		t.Fatal("the mailbox.changed example no longer describes the UID MOVE of this test: update it")
	}
	_, example, _ = strings.Cut(example, "```json\n")
	example, _, _ = strings.Cut(example, "```")
	const move = `{"event":"imap_command_finished","hostname":"mail-a.example.org","start_time":"2026-11-28T23:45:46.022459Z","end_time":"2026-11-28T23:45:46.025497Z","categories":["service:imap","imap"],"fields":{"user":"alice","session":"oD2Gxl5h8L5/AAAB","cmd_tag":"a7","cmd_name":"UID MOVE","mailbox":"INBOX","cmd_args":"41:42 Archive","tagged_reply_state":"OK"}}`
	env, stdout, stderr := testEnv(nil, move)
	if err := run(context.Background(), env, []string{"explain"}); err != nil {
		t.Fatalf("explain: %v\n%s", err, stderr)
	}
	var got, want map[string]any
	if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
		t.Fatalf("explain printed %q: %v", stdout, err)
	}
	if err := json.Unmarshal([]byte(example), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("explain prints\n%s\nthe example shows\n%s", stdout, example)
	}
}
