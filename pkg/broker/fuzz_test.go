package broker

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// FuzzIngress: whatever is POSTed to the broker's ingress, it answers 202
// (a valid CloudEvent, queued), 400 with a reason, 413 or 503, and keeps
// serving; it never panics.
//
//	go test -run '^$' -fuzz FuzzIngress -fuzztime 60s ./pkg/broker/
func FuzzIngress(f *testing.F) {
	f.Add(true, "application/json", "1.0", "e1", "mail-a.test", typeChanged, "priority", "high", `{"user":"u1"}`)
	f.Add(false, "application/cloudevents+json", "", "", "", "", "", "", structured)
	f.Add(false, "application/cloudevents-batch+json", "", "", "", "", "", "", "["+structured+"]")
	f.Add(true, "text/plain", "0.3", "e1", "mail-a.test", "t", "Priority", "", "x")
	f.Add(true, "", "1.0", "", "mail-a.test", typeChanged, "ttl", "0", "")
	f.Add(true, "application/json", "1.0", "e1", "%zz", typeChanged, "knativebrokerttl", "-1", "{")
	f.Add(false, "application/cloudevents+json", "", "", "", "", "", "", `{"specversion":"1.0","id":"e","source":"s","type":"t","data_base64":"!!"}`)
	f.Add(false, "application/cloudevents+json", "", "", "", "", "", "", `{"specversion":"1.0","id":"e","source":"s","type":"t","knativebrokerttl":"x"}`)

	cfg, err := Load(manifests(brokerDoc, trigger("all", "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: sub\n")))
	if err != nil {
		f.Fatal(err)
	}
	// A short queue: once it is full the ingress must answer 503, and the
	// subscriber takes events as fast as they come.
	b, err := New(cfg, Options{MaxBody: 4096, QueueSize: 8,
		Handlers: map[string]Handler{"sub": func(context.Context, cloudevents.Event) (*cloudevents.Event, protocol.Result) { return nil, nil }}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.Shutdown(context.Background()) })
	h := b.Ingress()

	f.Fuzz(func(t *testing.T, binary bool, contentType, specversion, id, source, typ, ext, extValue, body string) {
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if binary {
			for k, v := range map[string]string{"Ce-Specversion": specversion, "Ce-Id": id, "Ce-Source": source, "Ce-Type": typ, "Ce-" + ext: extValue} {
				if v != "" && validHeader(k, v) {
					req.Header.Set(k, v)
				}
			}
		}
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, req)
		switch rr.Code {
		case http.StatusAccepted:
			// Only a valid CloudEvent is queued. sdk-go's binary reading
			// depends on the order of the headers (a map), so it gets a
			// few tries to read what the ingress read.
			var ev *cloudevents.Event
			var err error
			for range 5 {
				again := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
				again.Header = req.Header.Clone()
				if ev, err = cehttp.NewEventFromHTTPRequest(again); err == nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("202 for a request the SDK does not read as an event: %v", err)
			}
			if err := ev.Validate(); err != nil {
				t.Fatalf("202 for an invalid event: %v", err)
			}
			for name := range ev.Extensions() {
				if !validExtensionName(name) {
					t.Fatalf("202 for an event with extension %q", name)
				}
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable:
			if strings.TrimSpace(rr.Body.String()) == "" {
				t.Fatalf("%d without a reason", rr.Code)
			}
		default:
			t.Fatalf("status %d: %s", rr.Code, rr.Body)
		}
	})
}

// validHeader is what net/http would send: a token name and a value
// without control characters.
func validHeader(k, v string) bool {
	for _, c := range k {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	for _, c := range v {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return k != "Ce-"
}

// FuzzLoad: any manifest folder either loads into Triggers that route, or
// is refused with an error; Load never panics.
//
//	go test -run '^$' -fuzz FuzzLoad -fuzztime 60s ./pkg/broker/
func FuzzLoad(f *testing.F) {
	f.Add(brokerDoc + "---\n" + trigger("t", "  filters:\n  - all:\n    - any:\n      - exact:\n          type: a\n    - not:\n        prefix:\n          priority: h\n  subscriber:\n    uri: http://127.0.0.1:1/\n  delivery:\n    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT0.5S\n"))
	f.Add(brokerDoc + "---\n" + trigger("t", "  filter:\n    attributes:\n      type: a\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n"))
	f.Add(brokerDoc + "---\n" + trigger("t", "  filters:\n  - cesql: \"priority = 'high'\"\n  subscriber:\n    uri: http://127.0.0.1:1/\n"))
	f.Add("kind: Trigger\nmetadata:\n  name: [\n")
	f.Add("apiVersion: v1\nkind: ConfigMap\n---\n---\n")
	f.Add(brokerDoc + "  annotations:\n    dovewarden.org/workers: \"99999999999\"\n")
	f.Add(brokerDoc + "---\n" + trigger("t", "  subscriber:\n    uri: https://127.0.0.1:1/\n    CACerts: |\n      -----BEGIN CERTIFICATE-----\n      AAAA\n      -----END CERTIFICATE-----\n  delivery:\n    deadLetterSink:\n      uri: https://127.0.0.1:2/\n      CACerts: \"\"\n      audience: x\n"))
	f.Fuzz(func(t *testing.T, yamlText string) {
		cfg, err := Load(fstest.MapFS{"t.yaml": {Data: []byte(yamlText)}})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		ev := cloudevents.NewEvent()
		ev.SetID("e1")
		ev.SetSource("mail-a.test")
		ev.SetType(typeChanged)
		ev.SetExtension("priority", "high")
		for _, tr := range cfg.Triggers {
			if tr.Name == "" || tr.Filter == nil || (tr.Subscriber.Ref == "" && tr.Subscriber.URI == "") {
				t.Fatalf("loaded an incomplete Trigger: %+v", tr)
			}
			if tr.Delivery.Retry < 0 || tr.Delivery.BackoffDelay < 0 || tr.Workers < 0 || tr.QueueSize < 0 {
				t.Fatalf("loaded negative delivery settings: %+v", tr)
			}
			for _, d := range []*Destination{&tr.Subscriber, tr.Delivery.DeadLetterSink} {
				if d != nil && d.CACerts != "" {
					if _, err := certPool(d.CACerts); err != nil {
						t.Fatalf("loaded CACerts that do not read: %v", err)
					}
				}
			}
			tr.Filter.Match(ev)
		}
	})
}

// FuzzDecodeSpool: whatever a spool file holds (a torn write, a hand
// edit, another program's file), DecodeSpool never panics, every line is
// either a held event or described as bad, and what it decodes survives
// EncodeSpool and DecodeSpool unchanged.
//
//	go test -run '^$' -fuzz FuzzDecodeSpool -fuzztime 60s ./pkg/broker/
func FuzzDecodeSpool(f *testing.F) {
	var buf bytes.Buffer
	reply := event("r1", typeSucceeded, "")
	dead := event("d1", typeChanged, "high")
	dead.SetExtension(ExtErrorCode, "503")
	notJSON := event("e3", typeChanged, "")
	notJSON.SetDataContentType("application/json")
	notJSON.DataEncoded = []byte("not json")
	if err := EncodeSpool(&buf, []Held{
		{Trigger: "dovewarden-sync-low", Phase: PhaseDeliver, TTL: 255, Event: notJSON},
		{Trigger: "dovewarden-sync-high", Phase: PhaseDeliver, TTL: 255, Event: event("e1", typeChanged, "high")},
		{Trigger: "dovewarden-sync-low", Phase: PhaseReply, TTL: 254, Event: event("e2", typeChanged, "low"), Reply: &reply},
		{Trigger: "dovewarden-sync-low", Phase: PhaseDeadLetter, TTL: 0, Event: dead},
	}, nil); err != nil {
		f.Fatal(err)
	}
	for _, line := range bytes.SplitAfter(buf.Bytes(), []byte("\n")) {
		f.Add(line)
	}
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:buf.Len()/2]) // torn
	f.Add([]byte(`{"trigger":"t","phase":"reply","ttl":1,"event":{"specversion":"1.0","id":"e","source":"s","type":"t"}}`))
	f.Add([]byte(`{"trigger":"t","phase":"deliver","ttl":-1,"event":{"specversion":"1.0","id":"e","source":"s","type":"t","data_base64":"!!"}}`))
	f.Add([]byte("\n\n{}\nnull\n[]\n\"x\"\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		held, bad, err := decodeAll(bytes.NewReader(data))
		lines := bytes.Count(data, []byte("\n")) + 1
		if err == nil && len(held)+len(bad) > lines {
			t.Fatalf("%d held and %d bad from %d lines", len(held), len(bad), lines)
		}
		for _, e := range bad {
			if !strings.HasPrefix(e.Error(), "line ") {
				t.Errorf("bad line not named: %v", e)
			}
		}
		var out bytes.Buffer
		if err := EncodeSpool(&out, held, nil); err != nil {
			t.Fatalf("EncodeSpool of what DecodeSpool gave: %v", err)
		}
		again, bad2, err := decodeAll(&out)
		if err != nil || len(bad2) > 0 || len(again) != len(held) {
			t.Fatalf("round trip: %d of %d, bad %v, err %v\n%s", len(again), len(held), bad2, err, out.Bytes())
		}
		for i := range held {
			a, b := held[i], again[i]
			if a.Trigger != b.Trigger || a.Phase != b.Phase || a.TTL != b.TTL || a.Event.String() != b.Event.String() ||
				(a.Reply == nil) != (b.Reply == nil) || (a.Reply != nil && a.Reply.String() != b.Reply.String()) {
				t.Fatalf("round trip changed line %d:\n%+v\n%+v", i, a, b)
			}
		}
	})
}

func decodeAll(r io.Reader) (held []Held, bad []error, err error) {
	err = DecodeSpool(r, SpoolLineLimit(DefaultMaxBody), func(h Held) { held = append(held, h) }, func(e error) { bad = append(bad, e) })
	return held, bad, err
}
