package contract

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

func sample() change.Change {
	return change.Change{
		ID: "7d0c7a0e-5b1e-5c55-9a41-2f6f1b8f2a10", User: "u1", Host: "mail-a.test",
		Time: time.Date(2026, 11, 29, 1, 2, 3, 4000, time.UTC), Priority: change.High,
		Event: "imap_command_finished", Command: "UID MOVE", Mailbox: "INBOX",
		DestinationMailbox: "Archive", Session: "sess1", Observed: time.Date(2026, 11, 29, 1, 2, 3, 500000000, time.UTC),
	}
}

func TestFromChange_Attributes(t *testing.T) {
	ev, err := FromChange(sample())
	if err != nil {
		t.Fatal(err)
	}
	if ev.SpecVersion() != "1.0" || ev.Type() != TypeMailboxChanged || ev.Source() != "mail-a.test" ||
		ev.Subject() != "u1" || ev.ID() != sample().ID || !ev.Time().Equal(sample().Time) {
		t.Errorf("attributes: %s", ev)
	}
	if ev.Extensions()[ExtPriority] != "high" || ev.Extensions()[ExtPartitionKey] != "u1" {
		t.Errorf("extensions %v", ev.Extensions())
	}
	var data map[string]any
	if err := json.Unmarshal(ev.Data(), &data); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"user": "u1", "host": "mail-a.test", "event": "imap_command_finished", "command": "UID MOVE",
		"mailbox": "INBOX", "destination_mailbox": "Archive", "session": "sess1", "priority": "high",
		"observed_at": "2026-11-29T01:02:03.5Z"}
	if len(data) != len(want) {
		t.Errorf("data %v, want %v", data, want)
	}
	for k, v := range want {
		if data[k] != v {
			t.Errorf("data[%s] = %v, want %v", k, data[k], v)
		}
	}
}

func TestFromChange_RejectsWhatCloudEventsForbid(t *testing.T) {
	c := sample()
	c.Host = ""
	if _, err := FromChange(c); err == nil || !strings.Contains(err.Error(), "source") {
		t.Errorf("empty host: %v", err)
	}
	c = sample()
	c.ID = ""
	if _, err := FromChange(c); err == nil {
		t.Error("empty id accepted")
	}
}

func TestToChange_RoundTrip(t *testing.T) {
	in := sample()
	ev, err := FromChange(in)
	if err != nil {
		t.Fatal(err)
	}
	// Through the wire format and back, as a subscriber sees it.
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var wire = ev.Clone()
	if err := json.Unmarshal(b, &wire); err != nil {
		t.Fatal(err)
	}
	out, err := ToChange(wire)
	if err != nil {
		t.Fatal(err)
	}
	if !out.Time.Equal(in.Time) {
		t.Errorf("time %v, want %v", out.Time, in.Time)
	}
	out.Time = in.Time
	if out != in {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, in)
	}
}

// TestToChange_SubjectAndDataUserMustAgree: a hop that changed one of
// them must not make sync replicate a user that does not exist. A hop
// that percent-encoded the subject, as CloudEvents' HTTP binding asks,
// changed nothing: the data's user is taken.
func TestToChange_SubjectAndDataUserMustAgree(t *testing.T) {
	c := sample()
	for _, user := range []string{"jörg@example.org", "per%cent", "john doe", "a+b"} {
		c.User = user
		ev, err := FromChange(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, subject := range []string{user, url.PathEscape(user)} {
			ev.SetSubject(subject)
			if got, err := ToChange(ev); err != nil || got.User != user {
				t.Errorf("subject %q, data user %q: %q, %v", subject, user, got.User, err)
			}
		}
	}
	ev, err := FromChange(sample())
	if err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{"other", url.PathEscape("jörg") + "@example.org", "%zz"} {
		ev.SetSubject(subject)
		if _, err := ToChange(ev); err == nil || !strings.Contains(err.Error(), "differ") {
			t.Errorf("subject %q other than the data's user %q: %v", subject, sample().User, err)
		}
	}
}

func TestToChange_WrongTypeOrPriority(t *testing.T) {
	ev, _ := FromChange(sample())
	ev.SetType("com.example.other")
	if _, err := ToChange(ev); err == nil {
		t.Error("other type accepted")
	}
	ev.SetType(TypeMailboxChanged)
	ev.SetExtension(ExtPriority, "urgent")
	c, err := ToChange(ev)
	if err != nil || c.Priority != change.Low {
		t.Errorf("unknown priority gave %q, %v; want low", c.Priority, err)
	}
}
