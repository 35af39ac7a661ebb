package dovecot

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/fixtures"
)

// parseStd is Parse as it was with encoding/json alone: the reference
// Parse must match exactly, events and error messages.
func parseStd(data []byte) (Event, error) {
	var ev Event
	if len(data) > MaxEventSize || len(bytes.TrimSpace(data)) == 0 {
		return Parse(data) // checked before any decoding
	}
	if err := json.Unmarshal(data, &ev); err != nil {
		return Event{}, describe(err)
	}
	if ev.Name == "" {
		return ev, errors.New(`missing "event": not a Dovecot exporter event`)
	}
	return ev, nil
}

// parseEdges are inputs where a decoder other than encoding/json is likely
// to decide differently.
var parseEdges = []string{
	append24,
	`{"event":"e","fieldſ":{"uſer":"x","K":1}}`, // folds like encoding/json: ſ is s, K (Kelvin) is k
	`{"EVENT":"e","Fields":{"USER":"x"},"HostName":"h"}`,
	`{"event":"e","fields":{"user":"a` + "\xff\xfe" + `b"}}`,
	`{"event":"e","fields":{"user":"\ud800 \udc00x \ud83d\ude00 \u00e9 \u2028"}}`,
	`{"event":"e","fields":{"user":"a\"b\\c\/d\b\f\n\r\t"}}`,
	`{"event":"e","fields":{"user":"a"},"fields":{"session":"s"}}`,
	`{"event":"e","categories":["a"],"categories":[]}`,
	`{"event":"e","categories":["a"],"categories":null}`,
	`{"event":"e","categories":["a",null,"b"]}`,
	`{"event":"e","fields":{"reason_code":["doveadm:cmd_expunge",null,"x"],"reason_code":["y"]}}`,
	`{"event":"e","fields":{"reason_code":"doveadm:cmd_expunge"}}`,
	`{"event":"e","fields":{"reason_code":[1]}}`,
	`{"event":"e","fields":null,"hostname":null,"end_time":null}`,
	`{"event":"e","event":null}`,
	`{"event":"e","end_time":"2026-11-28T23:45:46Z","end_time":null}`,
	`{"event":"e"}  ` + "\n\t\r",
	" \n{\"event\":\"e\"}",
	"\ufeff{\"event\":\"e\"}",
	`{"event":"e","x":1.}`,
	`{"event":"e","x":01}`,
	`{"event":"e","x":-}`,
	`{"event":"e","x":1e}`,
	`{"event":"e","x":1e+}`,
	`{"event":"e","x":.5}`,
	`{"event":"e","x":+5}`,
	`{"event":"e","x":-0.0e-0}`,
	`{"event":"e","x":"` + "\x01" + `"}`,
	`{"event":"e","x":"\q"}`,
	`{"event":"e","x":"\u12"}`,
	`{"event":"e","x":tru}`,
	`{"event":"e","x":nul}`,
	`{"event":"e","x":[1,]}`,
	`{"event":"e",}`,
	`{"event":"e" "x":1}`,
	`{"event":"e","x":{"a":1,}}`,
	`{"event":"e","x":{"a" 1}}`,
	`{"event":"e","x":[[[{}]]],"y":{"z":[true,false,null,"s",1e5]}}`,
	`{"event":"e","x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`,
	`{"event":"e","x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
	`{"event":"e","end_time":1795909546.5}`,
	`{"event":"e","end_time":1.795909546e9}`,
	`{"event":"e","end_time":0x10}`,
	`{"event":"e","end_time":1_0}`,
	`{"event":"e","end_time":5.}`,
	`{"event":"e","end_time":00012}`,
	`{"event":"e","end_time":-5}`,
	`{"event":"e","end_time":1e300}`,
	`{"event":"e","end_time":{}}`,
	`{"event":"e","end_time":[]}`,
	`{"event":"e","end_time":true}`,
	`{"event":"e","end_time":"yesterday"}`,
	`{"event":"e","end_time":"2026-11-28T23:45:46\u002e5Z"}`,
	`{"event":"e","end_time":"2026-11-28T23:45:46+01:00"}`,
	`{"event":"e","fields":{"user":5}}`,
	`{"event":"e","fields":{"user":["u"]}}`,
	`{"event":"e","fields":[]}`,
	`{"event":"e","categories":"imap"}`,
	`{"event":"e","categories":[1]}`,
	`{"event":5}`,
	`{"event":""}`,
	`{"hostname":"h"}`,
	`[1,2]`,
	`"event"`,
	`null`,
	`{}`,
	`{"event":"a"} {"event":"b"}`,
	`{"event":"a"}x`,
	`{"event":"x"`,
	`hello`,
	`{"event":"e","fields":{"user":"u","new_thing":[1],"bytes_in":3}}`,
}

// fixtureLines returns every event line of the real Dovecot fixtures.
func fixtureLines(tb testing.TB) [][]byte { return fixtures.Lines(tb, "testdata/fixtures") }

func checkParseMatches(t *testing.T, body []byte) {
	t.Helper()
	want, werr := parseStd(body)
	got, gerr := Parse(body)
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("Parse(%.200q): error %v, encoding/json's %v", body, gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse(%.200q):\n got %#v\nwant %#v", body, got, want)
	}
}

func TestParse_MatchesEncodingJSON(t *testing.T) {
	for _, e := range parseEdges {
		checkParseMatches(t, []byte(e))
	}
	for _, e := range fixtureLines(t) {
		checkParseMatches(t, e)
	}
}

// Parse must not keep the body: the ingest handler reuses its buffer.
func TestParse_CopiesStrings(t *testing.T) {
	body := []byte(append24)
	ev, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	before := ev
	before.Categories = append([]string(nil), ev.Categories...)
	for i := range body {
		body[i] = 'x'
	}
	if !reflect.DeepEqual(ev, before) {
		t.Fatalf("the event changed with the body: %+v", ev)
	}
}

// FuzzParseMatchesEncodingJSON checks that Parse decides and decodes as
// encoding/json does, whatever the input.
func FuzzParseMatchesEncodingJSON(f *testing.F) {
	for _, e := range parseEdges {
		f.Add([]byte(e))
	}
	for _, e := range fixtureLines(f) {
		f.Add(e)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkParseMatches(t, body)
	})
}

func BenchmarkParse(b *testing.B) {
	body := []byte(append24)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(body); err != nil {
			b.Fatal(err)
		}
	}
}
