package syncer

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// docSection is the text of docs/events.md under the heading title, up to
// the next heading of any level.
func docSection(t *testing.T, title string) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "\n"+title+"\n")
	if !ok {
		t.Fatalf("docs/events.md has no %q", title)
	}
	if i := strings.Index(rest, "\n#"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

var docName = regexp.MustCompile("`([a-z_]+)`")

// docTable lists the names in the first column of the section's table
// whose header starts with head ("| attribute |", "| data field |").
func docTable(t *testing.T, section, head string) []string {
	t.Helper()
	_, table, ok := strings.Cut(section, "\n"+head)
	if !ok {
		t.Fatalf("no table %q in %q", head, section)
	}
	var names []string
	for _, line := range strings.Split(table, "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		first := strings.Split(line, "|")[1]
		for _, m := range docName.FindAllStringSubmatch(first, -1) {
			names = append(names, m[1])
		}
	}
	if len(names) == 0 {
		t.Fatalf("table %q is empty", head)
	}
	return names
}

// attributes are the CloudEvent attributes ev carries, extensions
// included.
func attributes(ev cloudevents.Event) []string {
	out := []string{"specversion", "id", "source", "type"}
	if ev.Subject() != "" {
		out = append(out, "subject")
	}
	if !ev.Time().IsZero() {
		out = append(out, "time")
	}
	if ev.DataContentType() != "" {
		out = append(out, "datacontenttype")
	}
	for k := range ev.Extensions() {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func dataKeys(t *testing.T, ev cloudevents.Event) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(ev.Data(), &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func docNames(s ...[]string) []string {
	out := slices.Concat(s...)
	slices.Sort(out)
	return slices.Compact(out)
}

// Every event about a user has these (docs/events.md, "Attributes").
var commonAttributes = []string{"specversion", "id", "source", "type", "time", "datacontenttype", "subject", "partitionkey"}

// TestDocs_ReplyEventsMatchTheTables: the replies sync really sends, the
// succeeded one, the final failed one and a retried attempt's failed one
// sent through the results sink, carry exactly the attributes and data
// fields docs/events.md lists for their type.
func TestDocs_ReplyEventsMatchTheTables(t *testing.T) {
	succeededDoc := docSection(t, "### `org.dovewarden.replication.succeeded`")
	failedDoc := docSection(t, "### `org.dovewarden.replication.failed`")
	succAttrs := docNames(commonAttributes, docTable(t, succeededDoc, "| attribute |"))
	succData := docNames(docTable(t, succeededDoc, "| data field |"))
	if flat := strings.Join(strings.Fields(failedDoc), " "); !strings.Contains(flat, "Attributes as for `succeeded`") ||
		!strings.Contains(flat, "the extension `retryby`") {
		t.Fatalf("the failed section no longer says its attributes are succeeded's and retryby: update this test")
	}
	failAttrs := docNames(succAttrs, []string{"retryby"})
	failData := docNames(docTable(t, failedDoc, "| data field |"))

	f := newFixture(t)
	_, ok, body := f.postBinary(t, changeEvent(t, "u1", time.Now().Add(-time.Second)))
	if ok == nil || ok.Type() != contract.TypeReplicationSucceeded {
		t.Fatalf("no succeeded reply: %q", body)
	}
	if got := attributes(*ok); !slices.Equal(got, succAttrs) {
		t.Errorf("succeeded attributes %v, docs list %v", got, succAttrs)
	}
	if got := dataKeys(t, *ok); !slices.Equal(got, succData) {
		t.Errorf("succeeded data %v, docs list %v", got, succData)
	}

	f.dove.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75}, doveadmtest.Reply{ExitCode: 75}, doveadmtest.Reply{ExitCode: 75})
	_, final, body := f.postBinary(t, changeEvent(t, "u2", time.Now()))
	if final == nil || final.Type() != contract.TypeReplicationFailed {
		t.Fatalf("no failed reply: %q", body)
	}
	sent := f.broker.all()
	if len(sent) == 0 {
		t.Fatal("no retried attempt's failed event reached the results sink")
	}
	// Only a retried attempt has retry_at (retry_by sync).
	for name, ev := range map[string]cloudevents.Event{"final failed reply": *final, "retried attempt's failed event": sent[0]} {
		want := failData
		if name == "final failed reply" {
			want = slices.DeleteFunc(slices.Clone(failData), func(s string) bool { return s == "retry_at" })
		}
		if got := attributes(ev); !slices.Equal(got, failAttrs) {
			t.Errorf("%s: attributes %v, docs list %v", name, got, failAttrs)
		}
		if got := dataKeys(t, ev); !slices.Equal(got, want) {
			t.Errorf("%s: data %v, docs list %v", name, got, want)
		}
	}
}

// TestDocs_PingSourceExampleIsAnsweredAsShown: docs/events.md's Sweep
// section shows the PingSource's event and "the sync function's reply to
// it". Posted to sync, the first gets the second: the same attributes and
// data but for the sweep's own id, and an id derived from the sweep and
// the offset as the example's is.
func TestDocs_PingSourceExampleIsAnsweredAsShown(t *testing.T) {
	doc, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Sweep\n")
	if !ok {
		t.Fatal("docs/events.md has no Sweep section")
	}
	examples := map[string]cloudevents.Event{}
	for _, b := range strings.Split(section, "```json\n")[1:] {
		body, _, _ := strings.Cut(b, "```")
		var ev cloudevents.Event
		if err := json.Unmarshal([]byte(body), &ev); err != nil {
			t.Fatalf("example %q: %v", body, err)
		}
		examples[ev.Type()] = ev
	}
	ping, ok := examples[contract.TypePingSource]
	want, ok2 := examples[contract.TypeSweepRequested]
	if !ok || !ok2 {
		t.Fatalf("the Sweep section has no PingSource example or no continuation example: update this test")
	}
	var wantData contract.SweepRequested
	if err := json.Unmarshal(want.Data(), &wantData); err != nil {
		t.Fatal(err)
	}
	derived, err := contract.SweepContinuation(wantData.Sweep, wantData.Offset, wantData.Hops, wantData.Reason, want.Source())
	if err != nil {
		t.Fatal(err)
	}
	if want.ID() != derived.ID() {
		t.Errorf("the example continuation's id is %s; its sweep and offset make it %s", want.ID(), derived.ID())
	}

	s := newSweepFixture(t, "u1", "u2", "u3")
	resp, reply, body := s.post(t, ping)
	if resp.StatusCode != http.StatusOK || reply == nil {
		t.Fatalf("the PingSource example: %d %q, want 200 and a continuation", resp.StatusCode, body)
	}
	if got, exp := attributes(*reply), attributes(want); !slices.Equal(got, exp) {
		t.Errorf("reply attributes %v, the example's %v", got, exp)
	}
	if reply.Type() != want.Type() || reply.Source() != want.Source() || reply.DataContentType() != want.DataContentType() ||
		reply.Extensions()[contract.ExtPriority] != want.Extensions()[contract.ExtPriority] {
		t.Errorf("reply %s\nthe example %s", reply, want)
	}
	var got map[string]any
	var exp map[string]any
	if err := json.Unmarshal(reply.Data(), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want.Data(), &exp); err != nil {
		t.Fatal(err)
	}
	// The sweep's id is its own each time.
	delete(got, "sweep")
	delete(exp, "sweep")
	if b1, b2 := fmt.Sprint(got), fmt.Sprint(exp); b1 != b2 {
		t.Errorf("reply data (but the sweep id) %s, the example's %s", b1, b2)
	}
}
