package ingest

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/fixtures"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

// fixtureEvents returns every event line of the real Dovecot fixtures.
func fixtureEvents(tb testing.TB) [][]byte { return fixtures.Lines(tb, "../dovecot/testdata/fixtures") }

var lowercase, _ = dovecot.ParseUsernameFormat(dovecot.DefaultUsernameFormat)

// pipeline is what ingest does with a body, without HTTP: parse, classify,
// map to a CloudEvent.
func pipeline(body []byte) (*cloudevents.Event, dovecot.DropReason, error) {
	ev, err := dovecot.Parse(body)
	if err != nil {
		return nil, "", err
	}
	host := ""
	if ev.Hostname == "" {
		host = "fallback.test"
	}
	_, ce, reason, err := Translator{Username: lowercase}.Translate(&ev, host)
	if reason != "" || err != nil {
		return nil, reason, err
	}
	return &ce, "", nil
}

func FuzzPipeline(f *testing.F) {
	for _, e := range fixtureEvents(f) {
		f.Add(e)
	}
	f.Add([]byte(appendEvent))
	f.Add([]byte(selectEvent))
	f.Add([]byte(`{"event":"pop3_command_finished","hostname":"h","start_time":1.5,"fields":{"user":"u","cmd_name":"DELE","reply_state":"OK"}}`))
	f.Add([]byte(`{"event":"imap_command_finished","hostname":"h","fields":{"user":"u","cmd_name":"UID COPY","cmd_args":"1 \"&ZeVnLIqe-\"","tagged_reply_state":"OK"}}`))
	f.Add([]byte(`{"event":"managesieve_command_finished","hostname":"h","categories":["managesieve","service:managesieve"],"fields":{"user":"u","cmd_name":"PUTSCRIPT","cmd_args":"\"vacation\"","script_name":"vacation","compile_warnings":0}}`))
	f.Add([]byte(`{"event":"managesieve_command_finished","hostname":"h","fields":{"user":"u","cmd_name":"PUTSCRIPT","error":"Compilation failed","compile_errors":1}}`))
	f.Add([]byte(`{"event":"mail_delivery_finished","hostname":"h","fields":{"user":"u\ud800"}}`))
	f.Add([]byte("{\"event\":\"mail_delivery_finished\",\"hostname\":\"h\",\"fields\":{\"user\":\"u\xff\"}}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		ce, reason, err := pipeline(body)
		if err != nil || reason != "" {
			return
		}
		if strings.ContainsRune(ce.Subject(), utf8.RuneError) {
			t.Fatalf("a username with U+FFFD (the name sent is lost) from %q", body)
		}
		if verr := ce.Validate(); verr != nil {
			t.Fatalf("invalid CloudEvent from %q: %v", body, verr)
		}
		if ce.Subject() == "" {
			t.Fatalf("change without a user from %q", body)
		}
		if p := ce.Extensions()[contract.ExtPriority]; p != "high" && p != "low" {
			t.Fatalf("priority %v from %q", p, body)
		}
		again, _, _ := pipeline(body)
		if again == nil || again.ID() != ce.ID() {
			t.Fatalf("id not deterministic for %q", body)
		}
	})
}

type nopSender struct{ n int }

func (s *nopSender) Send(_ context.Context, ev cloudevents.Event) error {
	s.n++
	return ev.Validate()
}

func FuzzHandler(f *testing.F) {
	for _, e := range fixtureEvents(f) {
		f.Add(e)
	}
	f.Add([]byte(appendEvent))
	f.Add([]byte(`{"event":"mail_delivery_finished","hostname":"a b","fields":{"user":"u"}}`))
	snd := &nopSender{}
	h := NewHandler(Options{MaxBody: 64 << 10}, snd, nil, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusAccepted, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if rec.Code >= 400 && !strings.Contains(rec.Body.String(), `"error"`) {
			t.Fatalf("4xx without a reason: %s", rec.Body)
		}
	})
}

func TestFixtures_EveryEventParses(t *testing.T) {
	events := fixtureEvents(t)
	if len(events) == 0 {
		t.Fatal("no fixtures found under pkg/dovecot/testdata/fixtures")
	}
	for _, e := range events {
		if _, _, err := pipeline(e); err != nil {
			t.Errorf("real Dovecot event rejected: %v\n%s", err, e)
		}
	}
}

// BenchmarkPipeline measures parse+classify+map per event over the real
// fixtures' mix of kinds.
func BenchmarkPipeline(b *testing.B) {
	events := fixtureEvents(b)
	if len(events) == 0 {
		events = [][]byte{[]byte(appendEvent), []byte(selectEvent)}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, _, err := pipeline(events[i%len(events)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPipelineAppend measures one typical new-mail event.
func BenchmarkPipelineAppend(b *testing.B) {
	body := []byte(appendEvent)
	b.ReportAllocs()
	for b.Loop() {
		if ce, _, err := pipeline(body); err != nil || ce == nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandler measures the HTTP handler with a sender that costs
// nothing: the server-side cost of one accepted event.
func BenchmarkHandler(b *testing.B) {
	h := NewHandler(Options{MaxBody: 64 << 10}, &nopSender{}, nil, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	body := []byte(appendEvent)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusAccepted {
			b.Fatal(rec.Code)
		}
	}
}
