package contract

import (
	"errors"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// checkSamePath checks that FromChange builds exactly the event, or the
// error, of the SDK's setters.
func checkSamePath(t *testing.T, c change.Change) {
	t.Helper()
	got, gerr := FromChange(c)
	want, werr := fromChange(c)
	if (gerr == nil) != (werr == nil) || gerr != nil && errorText(gerr) != errorText(werr) {
		t.Fatalf("FromChange(%+v): error %v, the setters' %v", c, gerr, werr)
	}
	if gerr != nil {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("FromChange(%+v):\n got %#v %#v\nwant %#v %#v", c, got, got.Context, want, want.Context)
	}
	if string(got.Data()) != string(want.Data()) {
		t.Fatalf("data %s, want %s", got.Data(), want.Data())
	}
}

// errorText is err's message with the attributes of a ValidationError in
// it sorted: the SDK lists them in map order.
func errorText(err error) string {
	msg := err.Error()
	var ve event.ValidationError
	if !errors.As(err, &ve) {
		return msg
	}
	// The ValidationError ends the message; its length does not depend on
	// the order.
	n := len(msg) - len(ve.Error())
	lines := strings.Split(msg[n:], "\n")
	sort.Strings(lines)
	return msg[:n] + strings.Join(lines, "\n")
}

func TestFromChange_UsualPath(t *testing.T) {
	if _, ok := fromUsualChange(&change.Change{ID: "x", Host: "mail-a.test"}); !ok {
		t.Fatal("a usual change took the checked path")
	}
	for _, mod := range []func(*change.Change){
		func(*change.Change) {},
		func(c *change.Change) { c.Host = "" },
		func(c *change.Change) { c.Host = " " },
		func(c *change.Change) { c.Host = "." },
		func(c *change.Change) { c.Host = "mail_a-1.example.org" },
		func(c *change.Change) { c.Host = "mail-a:143" },
		func(c *change.Change) { c.Host = "::1" },
		func(c *change.Change) { c.Host = "1mail:x" },
		func(c *change.Change) { c.Host = "a b" },
		func(c *change.Change) { c.Host = "a%2Fb" },
		func(c *change.Change) { c.Host = "a%zz" },
		func(c *change.Change) { c.Host = "//host/x?y#z" },
		func(c *change.Change) { c.ID = "" },
		func(c *change.Change) { c.ID = " \t" },
		func(c *change.Change) { c.ID = " id " },
		func(c *change.Change) { c.User = "" },
		func(c *change.Change) { c.User = "  " },
		func(c *change.Change) { c.User = " u1 " },
		func(c *change.Change) { c.User = "Ünïcødé <&> \"q\" \\ \u2028 \xff" },
		func(c *change.Change) { c.Time = time.Time{} },
		func(c *change.Change) { c.Time = time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)) },
		func(c *change.Change) { c.Observed = time.Time{} },
		func(c *change.Change) { c.Observed = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
		func(c *change.Change) { c.Observed = time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", -7200)) },
		func(c *change.Change) { c.Priority = "" },
		func(c *change.Change) { c.Priority = "urgent" },
		func(c *change.Change) {
			c.Command, c.Mailbox, c.DestinationMailbox, c.OldMailbox, c.Session, c.MessageID = "", "", "", "", "", ""
		},
		func(c *change.Change) { c.MessageID = "<id@example.org>" },
		func(c *change.Change) { c.Mailbox, c.DestinationMailbox = "Entwürfe", "日本語/Éléments envoyés" },
		func(c *change.Change) { c.Mailbox = "del\x7f" },
		func(c *change.Change) { c.Mailbox = "a\u2028b" },
		func(c *change.Change) { c.Mailbox = "a\u2029b" },
		func(c *change.Change) { c.Mailbox = "bad \xe6\x97" },
		func(c *change.Change) { c.Session = "tab\t" },
		func(c *change.Change) { c.Command = "A&B" },
	} {
		c := sample()
		mod(&c)
		checkSamePath(t, c)
	}
}

func FuzzFromChange(f *testing.F) {
	s := sample()
	f.Add(s.ID, s.User, s.Host, s.Mailbox, s.MessageID, int64(1795909546), int64(1795909547))
	f.Add("", "", "", "", "", int64(0), int64(0))
	f.Add(" id", "u ", "mail-a:1", "\u2028", "<a&b>", int64(-1), int64(1<<40))
	f.Fuzz(func(t *testing.T, id, user, host, mailbox, msgid string, at, observed int64) {
		c := sample()
		c.ID, c.User, c.Host, c.Mailbox, c.MessageID = id, user, host, mailbox, msgid
		c.Time, c.Observed = time.Unix(at, at%1e9), time.Unix(observed, 0)
		checkSamePath(t, c)
	})
}

func BenchmarkFromChange(b *testing.B) {
	c := sample()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := FromChange(c); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzDecodeData: the fast decoding of an event's data gives what the SDK's
// DataAs gives whenever DataAs accepts it.
func FuzzDecodeData(f *testing.F) {
	ev, err := FromChange(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ev.Data())
	f.Add([]byte(`{"USER":"u","observed_at":"2026-01-02T03:04:05.123456789+02:00","mailbox":"\u00fc\ud800"}`))
	f.Add([]byte(`{"user":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev := cloudevents.NewEvent()
		// SetData takes any bytes as they are: an error is the test's own.
		if err := ev.SetData(cloudevents.ApplicationJSON, data); err != nil {
			t.Fatalf("data %q: SetData: %v", data, err)
		}
		var want, got MailboxChanged
		if ev.DataAs(&want) != nil {
			return
		}
		if err := decodeData(ev, &got); err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("data %q: decoded %+v (%v), DataAs %+v", data, got, err, want)
		}
	})
}
