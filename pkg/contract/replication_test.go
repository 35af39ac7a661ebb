package contract

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

func TestRequested_RoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	ev, err := Requested(change.Request{User: "u1", Host: "mail-b", Full: true, Time: at}, "admin", "dovewarden/cli")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type() != TypeReplicationRequested || ev.Subject() != "u1" || ev.Extensions()[ExtPriority] != "high" {
		t.Fatalf("%v", ev)
	}
	var data ReplicationRequested
	if err := ev.DataAs(&data); err != nil || data.Reason != "admin" || data.Host != "mail-b" || !data.Full {
		t.Fatalf("data %+v, %v", data, err)
	}
	req, err := ToRequest(ev)
	if err != nil {
		t.Fatal(err)
	}
	if req.User != "u1" || req.Host != "mail-b" || !req.Full || !req.Explicit || !req.Time.Equal(at) || req.Priority != change.High {
		t.Errorf("%+v", req)
	}
}

func TestToRequest(t *testing.T) {
	changed, err := FromChange(change.Change{ID: "c1", User: "u1", Host: "mail-a", Priority: change.Low, Event: "imap_command_finished",
		Time: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	req, err := ToRequest(changed)
	if err != nil || req.User != "u1" || req.Host != "mail-a" || req.Priority != change.Low || req.Explicit || req.ID != "c1" {
		t.Errorf("from a change: %+v, %v", req, err)
	}

	bad := func(mod func(*cloudevents.Event)) cloudevents.Event {
		ev := cloudevents.NewEvent()
		ev.SetID("x")
		ev.SetSource("s")
		ev.SetType(TypeReplicationRequested)
		mod(&ev)
		return ev
	}
	for name, tt := range map[string]struct {
		ev   cloudevents.Event
		want string
	}{
		"other type": {bad(func(e *cloudevents.Event) { e.SetType(TypeSweepRequested) }), "is not"},
		"not json":   {bad(func(e *cloudevents.Event) { _ = e.SetData("application/json", []byte("{nope")) }), "data of event"},
		"users differ": {bad(func(e *cloudevents.Event) {
			e.SetSubject("a")
			_ = e.SetData("application/json", map[string]string{"user": "b"})
		}), "differ"},
		"data mistyped": {bad(func(e *cloudevents.Event) { _ = e.SetData("application/json", map[string]int{"user": 1}) }), "data of event"},
	} {
		if _, err := ToRequest(tt.ev); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", name, err, tt.want)
		}
	}

	// A sender that percent-encodes header values (CloudEvents' HTTP
	// binding 3.1.3.2; sdk-go does not undo it) asks for jürgen.
	encoded := bad(func(e *cloudevents.Event) {
		e.SetSubject("j%C3%BCrgen")
		_ = e.SetData("application/json", map[string]string{"user": "jürgen"})
	})
	if req, err := ToRequest(encoded); err != nil || req.User != "jürgen" {
		t.Errorf("percent-encoded subject: %+v, %v", req, err)
	}
}

func TestSucceededAndFailed(t *testing.T) {
	start := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	req := change.Request{ID: "c1", User: "u1", Priority: change.High}
	ok, err := Succeeded(req, change.Result{User: "u1", Host: "mail-a", Destination: "tcp:mail-b:12345", Start: start,
		End: start.Add(30 * time.Millisecond), Lag: 2 * time.Second, Coalesced: 3, Attempts: 1}, "dovewarden/sync")
	if err != nil {
		t.Fatal(err)
	}
	var s ReplicationSucceeded
	if err := ok.DataAs(&s); err != nil || s.DurationMS != 30 || s.LagMS != 2000 || s.Mode != ModeIncremental || s.Coalesced != 3 || s.TriggerID != "c1" {
		t.Errorf("succeeded %+v %v", s, err)
	}
	if ok.Type() != TypeReplicationSucceeded || ok.Subject() != "u1" || !ok.Time().Equal(start.Add(30*time.Millisecond)) {
		t.Errorf("%v", ok)
	}
	retry := start.Add(time.Second)
	fe, err := Failed(req, change.Failure{User: "u1", Host: "mail-a", Error: "exit code 75", Class: "tempfail", ExitCode: 75,
		Attempt: 1, MaxAttempts: 4, Retryable: true, RetryBy: change.RetryBySync, RetryAt: retry, End: start}, "dovewarden/sync")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(fe.Data(), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["exit_code"] != 75.0 || raw["retry_at"] != "2026-11-29T10:00:01Z" || raw["retry_by"] != "sync" || raw["retryable"] != true || raw["attempt"] != 1.0 {
		t.Errorf("failed data %v", raw)
	}
	if fe.Extensions()[ExtRetryBy] != "sync" {
		t.Errorf("retried attempt: extensions %v, want retryby sync", fe.Extensions())
	}
	final, _ := Failed(req, change.Failure{User: "u1", RetryBy: change.RetryBySweep}, "dovewarden/sync")
	if strings.Contains(string(final.Data()), "retry_at") {
		t.Errorf("a final failure has retry_at: %s", final.Data())
	}
	if final.Extensions()[ExtRetryBy] != "sweep" {
		t.Errorf("final failure: extensions %v, want retryby sweep", final.Extensions())
	}
	if err := final.Validate(); err != nil {
		t.Errorf("final failure: %v", err)
	}
}
