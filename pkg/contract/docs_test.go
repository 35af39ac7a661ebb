package contract

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// docExamples are the JSON examples of docs/events.md from the heading
// from on, up to the next heading of its level, by type; a type shown
// twice is keyed type#source.
func docExamples(t *testing.T, from string) map[string]map[string]any {
	t.Helper()
	doc, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n"+from+"\n")
	if !ok {
		t.Fatalf("docs/events.md has no %q", from)
	}
	level := from[:strings.Index(from, " ")+1]
	if i := strings.Index(section, "\n"+level); i >= 0 {
		section = section[:i]
	}
	out := map[string]map[string]any{}
	for _, b := range strings.Split(section, "```json\n")[1:] {
		body, _, _ := strings.Cut(b, "```")
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("example %q: %v", body, err)
		}
		key, _ := m["type"].(string)
		if _, dup := out[key]; dup {
			key += "#" + m["source"].(string)
		}
		out[key] = m
	}
	return out
}

// asMap is ev in the structured form the examples show.
func asMap(t *testing.T, ev cloudevents.Event) map[string]any {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func docTime(t *testing.T, v any) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, v.(string))
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// TestDocs_ReplicationExamplesAreWhatTheContractWrites: the examples of
// replication.requested, succeeded and failed in docs/events.md are the
// events the contract makes of their own values: every attribute and
// data field, with its value. Only the ids of succeeded, failed and the
// sweep's request (a new UUID, one derived from a sweep the example does
// not name) are not compared.
func TestDocs_ReplicationExamplesAreWhatTheContractWrites(t *testing.T) {
	ex := docExamples(t, "## Replication results")
	for k, v := range docExamples(t, "## Sweep") {
		if strings.HasPrefix(k, TypeReplicationRequested) {
			ex[TypeReplicationRequested+"#"+SourceSweep] = v
		}
	}
	data := func(typ string) map[string]any { return ex[typ]["data"].(map[string]any) }
	prio := func(typ string) change.Priority { return change.Priority(ex[typ]["priority"].(string)) }
	str := func(typ, field string) string { s, _ := data(typ)[field].(string); return s }
	num := func(typ, field string) int { return int(data(typ)[field].(float64)) }
	for _, typ := range []string{TypeReplicationRequested, TypeReplicationSucceeded, TypeReplicationFailed, TypeReplicationRequested + "#" + SourceSweep} {
		if ex[typ] == nil {
			t.Fatalf("no example of %s: update this test", typ)
		}
	}

	made := map[string]cloudevents.Event{}
	var err error
	typ := TypeReplicationRequested
	made[typ], err = Requested(change.Request{ID: ex[typ]["id"].(string), User: ex[typ]["subject"].(string), Host: str(typ, "host"),
		Full: data(typ)["full"] == true, Priority: prio(typ), Time: docTime(t, ex[typ]["time"])}, str(typ, "reason"), ex[typ]["source"].(string))
	if err != nil {
		t.Fatal(err)
	}
	typ = TypeReplicationSucceeded
	made[typ], err = Succeeded(change.Request{ID: str(typ, "trigger_id"), Priority: prio(typ)}, change.Result{
		User: str(typ, "user"), Host: str(typ, "host"), Destination: str(typ, "destination"),
		Start: docTime(t, data(typ)["start"]), End: docTime(t, data(typ)["end"]),
		Lag: time.Duration(num(typ, "lag_ms")) * time.Millisecond, Coalesced: num(typ, "coalesced"),
		Full: str(typ, "mode") == ModeFull, Attempts: num(typ, "attempts")}, ex[typ]["source"].(string))
	if err != nil {
		t.Fatal(err)
	}
	typ = TypeReplicationFailed
	made[typ], err = Failed(change.Request{ID: str(typ, "trigger_id"), Priority: prio(typ)}, change.Failure{
		User: str(typ, "user"), Host: str(typ, "host"), Destination: str(typ, "destination"), Error: str(typ, "error"),
		Class: str(typ, "class"), ExitCode: num(typ, "exit_code"), Attempt: num(typ, "attempt"), MaxAttempts: num(typ, "max_attempts"),
		Retryable: data(typ)["retryable"] == true, RetryBy: str(typ, "retry_by"), RetryAt: docTime(t, data(typ)["retry_at"]),
		Full: str(typ, "mode") == ModeFull, Start: docTime(t, data(typ)["start"]), End: docTime(t, data(typ)["end"])}, ex[typ]["source"].(string))
	if err != nil {
		t.Fatal(err)
	}
	typ = TypeReplicationRequested + "#" + SourceSweep
	made[typ], err = SweepReplication("s", change.Request{User: str(typ, "user"), Host: str(typ, "host"), Full: data(typ)["full"] == true,
		Time: docTime(t, ex[typ]["time"])}, strings.TrimPrefix(str(typ, "reason"), "sweep:"))
	if err != nil {
		t.Fatal(err)
	}

	for typ, ev := range made {
		got, want := asMap(t, ev), ex[typ]
		if typ != TypeReplicationRequested {
			delete(got, "id")
			delete(want, "id")
		}
		// Times as instants: the example may spell them otherwise.
		if !docTime(t, got["time"]).Equal(docTime(t, want["time"])) {
			t.Errorf("%s: time %v, the example's %v", typ, got["time"], want["time"])
		}
		got["time"], want["time"] = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n the contract writes %v\n the example shows %v", typ, got, want)
		}
	}
}
