package contract

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

func TestSweepRequest_AndContinuationRoundTrip(t *testing.T) {
	ev, err := SweepRequest("cli", "dovewarden/cli", false)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type() != TypeSweepRequested || ev.Source() != "dovewarden/cli" || ev.Extensions()[ExtPriority] != "low" || ev.ID() == "" {
		t.Errorf("request %v", ev)
	}
	d, err := ToSweep(ev)
	if err != nil || d != (SweepRequested{Reason: "cli"}) {
		t.Errorf("ToSweep = %+v, %v", d, err)
	}

	c1, err := SweepContinuation("20261129T101700Z-3f2a9c", 500, 0, "schedule", "dovewarden/sync")
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := SweepContinuation("20261129T101700Z-3f2a9c", 500, 0, "schedule", "dovewarden/sync")
	c3, _ := SweepContinuation("20261129T101700Z-3f2a9c", 1000, 0, "schedule", "dovewarden/sync")
	if c1.ID() != c2.ID() || c1.ID() == c3.ID() {
		t.Errorf("continuation ids %s %s %s: want equal for one cursor, different for another", c1.ID(), c2.ID(), c3.ID())
	}
	d, err = ToSweep(c1)
	if err != nil || d != (SweepRequested{Reason: "schedule", Sweep: "20261129T101700Z-3f2a9c", Offset: 500}) {
		t.Errorf("ToSweep = %+v, %v", d, err)
	}
	// The first continuation says offset 0; a request for a new sweep
	// has no offset.
	c0, err := SweepContinuation("20261129T101700Z-3f2a9c", 0, 0, "schedule", "dovewarden/sync")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(c0.Data()); got != `{"reason":"schedule","sweep":"20261129T101700Z-3f2a9c","offset":0}` {
		t.Errorf("first continuation's data %s", got)
	}
	if got := string(ev.Data()); got != `{"reason":"cli"}` {
		t.Errorf("request's data %s", got)
	}
	all, err := SweepRequest("cli", "dovewarden/cli", true)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := ToSweep(all); err != nil || d != (SweepRequested{Reason: "cli", All: true}) || string(all.Data()) != `{"reason":"cli","all":true}` {
		t.Errorf("a sweep of every user: data %s, ToSweep = %+v, %v", all.Data(), d, err)
	}
	if d, err := ToSweep(c0); err != nil || d.Offset != 0 || d.Sweep == "" {
		t.Errorf("ToSweep = %+v, %v", d, err)
	}
	c9, err := SweepContinuation("20261129T101700Z-3f2a9c", 1500, 9, "schedule", "dovewarden/sync")
	if err != nil {
		t.Fatal(err)
	}
	if d, err := ToSweep(c9); err != nil || d.Hops != 9 || c9.ID() == c1.ID() {
		t.Errorf("ToSweep = %+v, %v", d, err)
	}
}

// pingEvent is what Knative's PingSource sends for
// config/knative/pingsource.yaml: its own type and source, whatever the
// manifest says, and the manifest's data.
func pingEvent(data string) cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID("p")
	ev.SetSource("/apis/v1/namespaces/dovewarden/pingsources/dovewarden-sweep")
	ev.SetType(TypePingSource)
	ev.SetExtension(ExtPriority, "low")
	if data != "" {
		_ = ev.SetData("application/json", []byte(data))
	}
	return ev
}

func TestToSweep_PingSourceDataAndNoData(t *testing.T) {
	for _, typ := range []string{TypePingSource, TypeSweepRequested} {
		ping := pingEvent(`{"reason":"schedule"}`)
		ping.SetType(typ)
		if d, err := ToSweep(ping); err != nil || d != (SweepRequested{Reason: "schedule"}) {
			t.Errorf("%s: %+v, %v", typ, d, err)
		}
		ping.DataEncoded = nil
		if d, err := ToSweep(ping); err != nil || d != (SweepRequested{}) {
			t.Errorf("%s, no data: %+v, %v", typ, d, err)
		}
	}
}

// A PingSource event always asks for a new sweep: data that would make it
// a continuation is refused, not half-read.
func TestToSweep_PingSourceIsNeverAContinuation(t *testing.T) {
	for name, data := range map[string]string{
		"sweep and offset": `{"reason":"schedule","sweep":"20261129T101700Z-3f2a9c","offset":500}`,
		"sweep":            `{"sweep":"20261129T101700Z-3f2a9c"}`,
		"offset":           `{"offset":7}`,
	} {
		if d, err := ToSweep(pingEvent(data)); err == nil || !strings.Contains(err.Error(), "cannot name a sweep or an offset") {
			t.Errorf("%s: %+v, %v", name, d, err)
		}
	}
	// Zero values ask for nothing more than a new sweep.
	if d, err := ToSweep(pingEvent(`{"reason":"schedule","sweep":"","offset":0}`)); err != nil || d != (SweepRequested{Reason: "schedule"}) {
		t.Errorf("zero cursor: %+v, %v", d, err)
	}
}

func TestToSweep_RefusesBadData(t *testing.T) {
	for name, tt := range map[string]struct {
		data string
		want string
	}{
		"not json":              {`{nope`, "data of event"},
		"hostile id":            {`{"sweep":"a b/../c"}`, "only letters"},
		"long id":               {`{"sweep":"` + strings.Repeat("a", 65) + `"}`, "exceeds"},
		"negative offset":       {`{"sweep":"s","offset":-1}`, "offset"},
		"offset without id":     {`{"offset":7}`, "offset"},
		"control in reason":     {`{"reason":"a\nb"}`, "control"},
		"offset as string":      {`{"sweep":"s","offset":"7"}`, "data of event"},
		"hops without id":       {`{"hops":3}`, "hops"},
		"too many hops":         {`{"sweep":"s","hops":256}`, "hops"},
		"negative hops":         {`{"sweep":"s","hops":-1}`, "hops"},
		"all in a continuation": {`{"sweep":"s","offset":5,"all":true}`, "all asks for a new sweep"},
	} {
		ev := cloudevents.NewEvent()
		ev.SetID("x")
		ev.SetSource("s")
		ev.SetType(TypeSweepRequested)
		_ = ev.SetData("application/json", []byte(tt.data))
		if _, err := ToSweep(ev); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want %q", name, err, tt.want)
		}
	}
}

func TestSweepReplication(t *testing.T) {
	at := time.Date(2026, 11, 29, 10, 17, 0, 0, time.UTC)
	ev, err := SweepReplication("s1", change.Request{User: "u1", Host: "mail-b", Full: true, Time: at}, "stale")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := SweepReplication("s1", change.Request{User: "u1", Time: at.Add(time.Minute)}, "stale")
	if ev.ID() != again.ID() {
		t.Errorf("ids %s and %s: a request sent again must keep its id", ev.ID(), again.ID())
	}
	if ev.Type() != TypeReplicationRequested || ev.Source() != SourceSweep || ev.Subject() != "u1" ||
		ev.Extensions()[ExtPriority] != "low" || !ev.Time().Equal(at) {
		t.Errorf("event %v", ev)
	}
	var d ReplicationRequested
	if err := ev.DataAs(&d); err != nil || d != (ReplicationRequested{User: "u1", Host: "mail-b", Full: true, Priority: "low", Reason: "sweep:stale"}) {
		t.Errorf("data %+v, %v", d, err)
	}
	req, err := ToRequest(ev)
	if err != nil || req.User != "u1" || req.Host != "mail-b" || !req.Full || req.Priority != change.Low || !req.Time.Equal(at) {
		t.Errorf("sync reads it as %+v, %v", req, err)
	}
}

// The examples of docs/events.md's Sweep section are events the contract
// reads.
func TestDocs_SweepExamplesAreValid(t *testing.T) {
	doc, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Sweep\n")
	if !ok {
		t.Fatal("docs/events.md has no Sweep section")
	}
	blocks := strings.Split(section, "```json\n")[1:]
	if len(blocks) != 3 {
		t.Fatalf("%d JSON examples, want 3", len(blocks))
	}
	for i, b := range blocks {
		body, _, _ := strings.Cut(b, "```")
		var ev cloudevents.Event
		if err := json.Unmarshal([]byte(body), &ev); err != nil {
			t.Errorf("example %d: %v", i, err)
			continue
		}
		switch ev.Type() {
		case TypeSweepRequested, TypePingSource:
			_, err = ToSweep(ev)
		case TypeReplicationRequested:
			_, err = ToRequest(ev)
		default:
			t.Errorf("example %d: type %q", i, ev.Type())
		}
		if err != nil {
			t.Errorf("example %d: %v", i, err)
		}
	}
}
