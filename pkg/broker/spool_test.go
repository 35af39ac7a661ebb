package broker

import (
	"bytes"
	"context"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// spoolManifests: "a" and "b" both take type x (overlapping); "ask"'s
// subscriber replies with type "answer", which "ans" takes in a lane of
// ansQueue + 1 places; "d" takes type "dead", whose subscriber refuses it for good (400),
// and its dead-letter sink's deliveries are retried an hour later.
func spoolManifests(t *testing.T, ansQueue int) *Config {
	return mustLoad(t,
		typeTrigger("a", "x", "slow", ""),
		typeTrigger("b", "x", "fast", ""),
		typeTrigger("ask", "ask", "replier", "  delivery:\n    retry: 3\n    backoffPolicy: exponential\n    backoffDelay: PT1H\n"),
		strings.Replace(typeTrigger("ans", "answer", "answers", ""), "  name: ans\n",
			"  name: ans\n  annotations:\n    dovewarden.org/workers: \"1\"\n    dovewarden.org/queue-size: \""+strconv.Itoa(ansQueue)+"\"\n", 1),
		typeTrigger("d", "dead", "failing", "  delivery:\n    retry: 1\n    backoffPolicy: exponential\n    backoffDelay: PT1H\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: sink\n"),
	)
}

func replyWith(typ string) func(int, cloudevents.Event) (*cloudevents.Event, protocol.Result) {
	return func(_ int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		r := cloudevents.NewEvent()
		r.SetID("reply-" + ev.ID())
		r.SetSource("replier")
		r.SetType(typ)
		return &r, nil
	}
}

func ids(evs []cloudevents.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.ID())
	}
	sort.Strings(out)
	return out
}

// TestSpool_WhatTheLanesHeldIsDeliveredAfterTheNextStart stops a broker
// whose lanes hold events in every phase (queued, in flight, a reply not
// yet published, a dead-letter delivery waiting for its retry), saves what
// Shutdown returns, and restores it into a new broker with the same
// manifests: each event reaches what it had not reached, exactly once,
// and an event an overlapping Trigger had delivered is not delivered
// there again.
func TestSpool_WhatTheLanesHeldIsDeliveredAfterTheNextStart(t *testing.T) {
	cfg := spoolManifests(t, 1)
	slow, stuck := newBlocker(), newBlocker()
	fast, replier, failing, sink := newRecorder(), newRecorder(), newRecorder(), newRecorder()
	// The replier answers only once Shutdown has begun: its reply then
	// finds the broker closed and is held in the reply phase.
	replyGate := make(chan struct{})
	replier.answer = func(n int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		<-replyGate
		return replyWith("answer")(n, ev)
	}
	failing.answer, sink.answer = fail(400), fail(503)
	b, err := New(cfg, Options{Workers: 1, Registerer: prometheus.NewRegistry(), Handlers: map[string]Handler{
		"slow": slow.handle, "fast": fast.handle, "replier": replier.handle, "answers": stuck.handle,
		"failing": failing.handle, "sink": sink.handle,
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	publish := func(id, typ string) {
		t.Helper()
		if err := b.Publish(ctx, event(id, typ, "")); err != nil {
			t.Fatalf("Publish %s: %v", id, err)
		}
	}
	for i := range 5 {
		publish("x"+strconv.Itoa(i), "x") // x0 in flight on "a", x1-x4 queued; all through "b"
	}
	for range 5 {
		fast.next(t)
	}
	publish("ans1", "answer") // in flight on "ans"
	eventually(t, "x0 and ans1 in flight", func() bool { return slow.started.Load() == 1 && stuck.started.Load() == 1 })
	publish("ans2", "answer") // queued: "ans" is full
	publish("q1", "ask")      // its reply comes once the broker is closed
	replier.next(t)
	publish("dead1", "dead") // given up on: its dead-letter delivery is retried in an hour
	sink.next(t)
	eventually(t, "the dead letter waits for its retry", func() bool {
		n := counterSum(t, b, "dovewarden_broker_retries_total")
		return n == 1
	})

	go func() {
		for {
			b.mu.RLock()
			closed := b.closed
			b.mu.RUnlock()
			if closed {
				close(replyGate)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	held, _ := b.Shutdown(sctx) // x0 and ans1 cancelled in flight, with retries left
	byPhase := map[string][]string{}
	for _, h := range held {
		id := h.Event.ID()
		if h.Reply != nil {
			id += ">" + h.Reply.ID()
		}
		byPhase[h.Phase] = append(byPhase[h.Phase], h.Trigger+":"+id)
	}
	for _, v := range byPhase {
		sort.Strings(v)
	}
	want := map[string][]string{
		PhaseDeliver:    {"a:x0", "a:x1", "a:x2", "a:x3", "a:x4", "ans:ans1", "ans:ans2"},
		PhaseReply:      {"ask:q1>reply-q1"},
		PhaseDeadLetter: {"d:dead1"},
	}
	for phase, w := range want {
		if !slices.Equal(byPhase[phase], w) {
			t.Errorf("held in phase %s: %v, want %v", phase, byPhase[phase], w)
		}
	}

	path := filepath.Join(t.TempDir(), "spool")
	if err := b.SaveSpool(path, held); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("spool file: %v %v", fi, err)
	}

	// The next start: every subscriber answers, and "ans" has room for
	// the reply too.
	recs := map[string]*recorder{}
	handlers := map[string]Handler{}
	for _, name := range []string{"slow", "fast", "replier", "answers", "failing", "sink"} {
		recs[name] = newRecorder()
		handlers[name] = recs[name].handle
	}
	b2, reg := start(t, spoolManifests(t, 10), Options{Handlers: handlers})
	n, err := b2.RestoreSpool(path)
	if err != nil || n != len(held) {
		t.Fatalf("RestoreSpool: %d of %d, %v", n, len(held), err)
	}
	gotN := func(name string, n int) []cloudevents.Event {
		var out []cloudevents.Event
		for range n {
			out = append(out, recs[name].next(t))
		}
		return out
	}
	if got := ids(gotN("slow", 5)); !slices.Equal(got, []string{"x0", "x1", "x2", "x3", "x4"}) {
		t.Errorf("a's subscriber got %v", got)
	}
	if got := ids(gotN("answers", 3)); !slices.Equal(got, []string{"ans1", "ans2", "reply-q1"}) {
		t.Errorf("ans's subscriber got %v", got)
	}
	dead := gotN("sink", 1)[0]
	if dead.ID() != "dead1" || dead.Extensions()[ExtErrorCode] != "400" {
		t.Errorf("dead-letter sink got %s with %v", dead.ID(), dead.Extensions())
	}
	for _, name := range []string{"slow", "fast", "replier", "answers", "failing", "sink"} {
		recs[name].quiet(t) // nothing twice, nothing that was done before the stop
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("spool file left after restoring: %v", err)
	}
	if left, _ := filepath.Glob(path + "*"); len(left) != 0 {
		t.Errorf("files left beside: %v", left)
	}
	if got := counter(t, reg, "dovewarden_broker_spool_events_total", map[string]string{"outcome": spoolRestored}); got != float64(len(held)) {
		t.Errorf("restored counted %v, want %d", got, len(held))
	}
}

// counterSum adds a counter's values over all its labels.
func counterSum(t *testing.T, b *Broker, name string) float64 {
	t.Helper()
	mfs, err := b.opts.Registerer.(prometheus.Gatherer).Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestRestoreSpool_KeepsWhatItCannotRestore: a line that is not a held
// event, and an event whose Trigger is gone, are logged, counted and kept
// in a file beside; the rest is delivered.
func TestRestoreSpool_KeepsWhatItCannotRestore(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("a", "x", "sub", ""))
	rec := newRecorder()
	b, reg := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	var buf bytes.Buffer
	if err := EncodeSpool(&buf, []Held{
		{Trigger: "a", Phase: PhaseDeliver, TTL: 255, Event: event("ok", "x", "")},
		{Trigger: "gone", Phase: PhaseDeliver, TTL: 255, Event: event("orphan", "x", "")},
	}, nil); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("{not json\n")
	content := buf.Bytes()
	dir := t.TempDir()
	path := filepath.Join(dir, "spool")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := b.RestoreSpool(path)
	if err != nil || n != 1 {
		t.Fatalf("RestoreSpool: %d, %v", n, err)
	}
	if got := rec.next(t); got.ID() != "ok" {
		t.Errorf("delivered %s", got.ID())
	}
	rec.quiet(t)
	for outcome, want := range map[string]float64{spoolRestored: 1, spoolNotRestored: 1, spoolInvalid: 1} {
		if got := counter(t, reg, "dovewarden_broker_spool_events_total", map[string]string{"outcome": outcome}); got != want {
			t.Errorf("%s: %v, want %v", outcome, got, want)
		}
	}
	kept, _ := filepath.Glob(path + ".kept-*")
	if len(kept) != 1 {
		t.Fatalf("kept files: %v", kept)
	}
	if got, _ := os.ReadFile(kept[0]); !bytes.Equal(got, content) {
		t.Errorf("kept file differs from the spool file:\n%s", got)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("spool file still there: %v", err)
	}
	// A second start finds nothing to do.
	if n, err := b.RestoreSpool(path); n != 0 || err != nil {
		t.Errorf("RestoreSpool again: %d, %v", n, err)
	}
}

// TestSaveSpool_NothingHeldRemovesTheFile: a stop that held nothing leaves
// no spool file, so the next start delivers nothing twice.
func TestSaveSpool_NothingHeldRemovesTheFile(t *testing.T) {
	b, _ := start(t, mustLoad(t, typeTrigger("a", "x", "sub", "")), Options{Handlers: map[string]Handler{"sub": newRecorder().handle}})
	path := filepath.Join(t.TempDir(), "spool")
	if err := os.WriteFile(path, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.SaveSpool(path, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("spool file still there: %v", err)
	}
	if err := b.SaveSpool(path, nil); err != nil {
		t.Errorf("with no file: %v", err)
	}
}

// TestSaveSpool_DataNotAsItsTypeSaysIsSavedAsIs: the ingress takes any
// bytes as data in binary mode, whatever Content-Type says; one such event
// must not cost the spool file the rest, and comes back with its bytes.
func TestSaveSpool_DataNotAsItsTypeSaysIsSavedAsIs(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("a", "x", "sub", ""))
	slow := newBlocker()
	b, _ := start(t, cfg, Options{Workers: 1, Handlers: map[string]Handler{"sub": slow.handle}})
	bodies := map[string]string{"good1": `{"n":1}`, "bad": "not json", "spaced": `{ "n": "<2>" }`, "good2": `{"n":3}`}
	for _, id := range []string{"good1", "bad", "spaced", "good2"} {
		rr := post(t, b.Ingress(), "POST", "/", with(with(binaryHeaders, "Ce-Id", id), "Ce-Type", "x"), bodies[id])
		if rr.Code != http.StatusAccepted {
			t.Fatalf("%s: %d %s", id, rr.Code, rr.Body)
		}
		eventually(t, "good1 in flight", func() bool { return slow.started.Load() == 1 })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	held, _ := b.Shutdown(ctx)
	if len(held) != len(bodies) {
		t.Fatalf("held %d events, want %d", len(held), len(bodies))
	}
	path := filepath.Join(t.TempDir(), "spool")
	if err := b.SaveSpool(path, held); err != nil {
		t.Fatalf("SaveSpool: %v", err)
	}

	rec := newRecorder()
	b2, _ := start(t, cfg, Options{Handlers: map[string]Handler{"sub": rec.handle}})
	if n, err := b2.RestoreSpool(path); n != len(bodies) || err != nil {
		t.Fatalf("RestoreSpool: %d, %v", n, err)
	}
	got := map[string]cloudevents.Event{}
	for range bodies {
		ev := rec.next(t)
		got[ev.ID()] = ev
	}
	for id, body := range bodies {
		ev, ok := got[id]
		if !ok || string(ev.Data()) != body || ev.DataContentType() != "application/json" || ev.DataBase64 {
			t.Errorf("%s restored as %v (data %q, base64 %t); want data %q, application/json", id, ok, ev.Data(), ev.DataBase64, body)
		}
	}
}

// TestSaveSpool_AnEventItCannotWriteCostsNoOther: an event the JSON format
// cannot hold at all is logged, counted and left out; the others are saved.
func TestSaveSpool_AnEventItCannotWriteCostsNoOther(t *testing.T) {
	b, reg := start(t, mustLoad(t, typeTrigger("a", "x", "sub", "")), Options{Handlers: map[string]Handler{"sub": newRecorder().handle}})
	path := filepath.Join(t.TempDir(), "spool")
	held := []Held{
		{Trigger: "a", Phase: PhaseDeliver, TTL: 255, Event: event("e1", "x", "")},
		{Trigger: "a", Phase: PhaseDeliver, TTL: 255, Event: cloudevents.Event{}}, // no context: cannot be written
		{Trigger: "a", Phase: PhaseDeliver, TTL: 255, Event: event("e2", "x", "")},
	}
	if err := b.SaveSpool(path, held); err != nil {
		t.Fatalf("SaveSpool: %v", err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved, bad, err := decodeAll(f)
	var evs []cloudevents.Event
	for _, h := range saved {
		evs = append(evs, h.Event)
	}
	if err != nil || len(bad) != 0 || !slices.Equal(ids(evs), []string{"e1", "e2"}) {
		t.Errorf("saved %v, bad lines %v, err %v; want e1 and e2", ids(evs), bad, err)
	}
	for outcome, want := range map[string]float64{spoolSaved: 2, spoolNotSaved: 1} {
		if got := counter(t, reg, "dovewarden_broker_spool_events_total", map[string]string{"outcome": outcome}); got != want {
			t.Errorf("%s: %v, want %v", outcome, got, want)
		}
	}
}

// TestSettings_SpoolFileFolderMustTakeAFile: a spool file that could not
// be written at the stop is refused at the start, naming the setting.
func TestSettings_SpoolFileFolderMustTakeAFile(t *testing.T) {
	dir := t.TempDir()
	for path, ok := range map[string]bool{
		filepath.Join(dir, "spool"):            true,
		filepath.Join(dir, "missing", "spool"): false,
		dir:                                    false, // a folder
	} {
		s := Settings{QueueSize: 1, QueueBytes: DefaultQueueBytes, Workers: 1, DeliveryTimeout: time.Second, SpoolFile: path}
		err := s.Validate()
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "spool-file")) {
			t.Errorf("%s: %v", path, err)
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("Validate left %d files", len(left))
	}
}

// TestShutdown_HoldsWhatItCutShort: a delivery and a dead-letter delivery
// cancelled by Shutdown, and a reply that arrives once the broker no
// longer takes events, are handed back even on Triggers with no retries: they failed for the stop, not
// for their destination.
func TestShutdown_HoldsWhatItCutShort(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("cut", "x", "stuck", ""), typeTrigger("late", "late.type", "replier", ""),
		typeTrigger("dl", "dl.type", "refuser", "  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: stucksink\n"))
	stuck, stuckSink, refuser := newBlocker(), newBlocker(), newRecorder()
	refuser.answer = fail(400)
	replier := &blocker{release: make(chan struct{})}
	b, err := New(cfg, Options{Handlers: map[string]Handler{
		"stuck": stuck.handle, "refuser": refuser.handle, "stucksink": stuckSink.handle,
		"replier": func(ctx context.Context, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
			replier.started.Add(1)
			<-replier.release // ignores ctx, as a slow handler may
			return replyWith("answer")(0, ev)
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []cloudevents.Event{event("c1", "x", ""), event("l1", "late.type", ""), event("d1", "dl.type", "")} {
		if err := b.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all in flight", func() bool {
		return stuck.started.Load() == 1 && replier.started.Load() == 1 && stuckSink.started.Load() == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	go func() {
		<-ctx.Done()
		close(replier.release) // answers after Shutdown closed the broker
	}()
	held, err := b.Shutdown(ctx)
	if err == nil {
		t.Error("Shutdown did not say it cancelled deliveries")
	}
	var got []string
	for _, h := range held {
		s := h.Trigger + ":" + h.Phase + ":" + h.Event.ID()
		if h.Reply != nil {
			s += ">" + h.Reply.ID()
		}
		got = append(got, s)
	}
	sort.Strings(got)
	if want := []string{"cut:deliver:c1", "dl:dead-letter:d1", "late:reply:l1>reply-l1"}; !slices.Equal(got, want) {
		t.Errorf("held %v, want %v", got, want)
	}
}

// TestRestoreSpool_StopsAtALineTooLong: the longest line a stop can write
// (an event and its reply, each with the largest body the broker takes,
// of control characters) is restored; a longer one is not (a line that is
// not a held event): what came before is restored and the file is kept.
func TestRestoreSpool_StopsAtALineTooLong(t *testing.T) {
	rec := newRecorder()
	cfg := mustLoad(t, typeTrigger("a", "x", "sub", ""), typeTrigger("r", "answer", "sub", ""))
	b, reg := start(t, cfg, Options{MaxBody: 1024, Handlers: map[string]Handler{"sub": rec.handle}})
	big, reply := event("first", "x", ""), event("big-reply", "answer", "")
	for _, ev := range []*cloudevents.Event{&big, &reply} {
		if err := ev.SetData("text/plain", strings.Repeat("\x01", 1024)); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := EncodeSpool(&buf, []Held{{Trigger: "a", Phase: PhaseReply, TTL: 255, Event: big, Reply: &reply}}, nil); err != nil {
		t.Fatal(err)
	}
	if buf.Len() < 12*1024 {
		t.Fatalf("the line is %d bytes: not the worst case", buf.Len())
	}
	buf.Write(bytes.Repeat([]byte("x"), SpoolLineLimit(1024)+1))
	path := filepath.Join(t.TempDir(), "spool")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := b.RestoreSpool(path); n != 1 || err != nil {
		t.Fatalf("RestoreSpool: %d, %v", n, err)
	}
	if got := rec.next(t); got.ID() != "big-reply" {
		t.Errorf("delivered %s", got.ID())
	}
	if got := counter(t, reg, "dovewarden_broker_spool_events_total", map[string]string{"outcome": spoolInvalid}); got != 1 {
		t.Errorf("invalid counted %v", got)
	}
	if kept, _ := filepath.Glob(path + ".kept-*"); len(kept) != 1 {
		t.Errorf("kept files: %v", kept)
	}
}

// spoolBenchEvents is what a stop with full lanes holds: 10,000 changes
// as ingest makes them.
func spoolBenchEvents(b *testing.B) []Held {
	held := make([]Held, 10000)
	for i := range held {
		ev := event("c080ea31-be87-5c9f-8405-"+strconv.Itoa(100000000000+i), typeChanged, "low")
		ev.SetSource("mail-1.example.test")
		ev.SetSubject("user" + strconv.Itoa(i%1000))
		ev.SetTime(time.Now())
		ev.SetExtension(ExtArrivalTime, time.Now())
		if err := ev.SetData("application/json", map[string]any{
			"user": ev.Subject(), "host": "mail-1.example.test", "event": "imap_command_finished",
			"command": "STORE", "mailbox": "INBOX", "time": time.Now().Format(time.RFC3339Nano),
		}); err != nil {
			b.Fatal(err)
		}
		held[i] = Held{Trigger: "sync-low", Phase: PhaseDeliver, TTL: DefaultTTL, Event: ev}
	}
	return held
}

// BenchmarkSpool: a stop that saves 10,000 held events, and the start that
// restores them into a lane (not delivered: the subscriber is blocked).
//
//	go test -run '^$' -bench Spool -benchmem ./pkg/broker/
func BenchmarkSpool(b *testing.B) {
	held := spoolBenchEvents(b)
	cfg, err := Load(manifests(brokerDoc, trigger("sync-low", "  filter:\n    attributes:\n      type: "+typeChanged+"\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: sub\n")))
	if err != nil {
		b.Fatal(err)
	}
	stuck := newBlocker()
	defer close(stuck.release)
	path := filepath.Join(b.TempDir(), "spool")
	b.Run("save", func(b *testing.B) {
		br, err := New(cfg, Options{QueueSize: len(held), Handlers: map[string]Handler{"sub": stuck.handle}})
		if err != nil {
			b.Fatal(err)
		}
		defer br.Shutdown(context.Background())
		for b.Loop() {
			if err := br.SaveSpool(path, held); err != nil {
				b.Fatal(err)
			}
		}
		if fi, err := os.Stat(path); err == nil {
			b.ReportMetric(float64(fi.Size())/float64(len(held)), "bytes/event")
		}
	})
	b.Run("restore", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			br, err := New(cfg, Options{QueueSize: len(held), Handlers: map[string]Handler{"sub": stuck.handle}})
			if err != nil {
				b.Fatal(err)
			}
			if err := br.SaveSpool(path, held); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			n, err := br.RestoreSpool(path)
			b.StopTimer()
			if err != nil || n != len(held) {
				b.Fatalf("restored %d of %d: %v", n, len(held), err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			br.Shutdown(ctx)
			cancel()
			b.StartTimer()
		}
	})
}

// TestRestoreSpool_AfterACrashWhileRestoring: a start that died while
// restoring left path.restoring; the next start delivers its events (at
// least once) before those of a newer spool file, and removes both.
func TestRestoreSpool_AfterACrashWhileRestoring(t *testing.T) {
	rec := newRecorder()
	b, _ := start(t, mustLoad(t, typeTrigger("a", "x", "sub", "")), Options{Workers: 1, Handlers: map[string]Handler{"sub": rec.handle}})
	path := filepath.Join(t.TempDir(), "spool")
	for file, id := range map[string]string{path + ".restoring": "crashed", path: "newer"} {
		var buf bytes.Buffer
		if err := EncodeSpool(&buf, []Held{{Trigger: "a", Phase: PhaseDeliver, TTL: 255, Event: event(id, "x", "")}}, nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.RestoreSpool(path); n != 2 || err != nil {
		t.Fatalf("RestoreSpool: %d, %v", n, err)
	}
	if got := []string{rec.next(t).ID(), rec.next(t).ID()}; !slices.Equal(got, []string{"crashed", "newer"}) {
		t.Errorf("delivered %v", got)
	}
	if left, _ := filepath.Glob(path + "*"); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
}

// TestRestoreSpool_ALeftoverStaysUntilTheNewerFileIsRead: after a crash
// while restoring, a start that restores the leftover path.restoring but
// cannot read the newer spool file (here a symbolic link to itself, which
// renames but does not open) is refused, and the leftover stays on disk:
// its events, already in the lanes of the broker that does not start, are
// restored by the next start.
func TestRestoreSpool_ALeftoverStaysUntilTheNewerFileIsRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool")
	var buf bytes.Buffer
	if err := EncodeSpool(&buf, []Held{{Trigger: "a", Phase: PhaseDeliver, TTL: 255, Event: event("crashed", "x", "")}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".restoring", buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(path), path); err != nil {
		t.Fatal(err)
	}
	refused, _ := start(t, mustLoad(t, typeTrigger("a", "x", "sub", "")), Options{Workers: 1, Handlers: map[string]Handler{"sub": newRecorder().handle}})
	if _, err := refused.RestoreSpool(path); err == nil {
		t.Fatal("RestoreSpool: no error for a spool file that does not open")
	}

	// The administrator removes the link; the next start restores the
	// leftover.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	b, _ := start(t, mustLoad(t, typeTrigger("a", "x", "sub", "")), Options{Workers: 1, Handlers: map[string]Handler{"sub": rec.handle}})
	if n, err := b.RestoreSpool(path); n != 1 || err != nil {
		t.Fatalf("the next start's RestoreSpool: %d, %v", n, err)
	}
	if got := rec.next(t).ID(); got != "crashed" {
		t.Errorf("delivered %q, want the leftover's event", got)
	}
	if left, _ := filepath.Glob(path + "*"); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
}

// TestRestoreSpool_KeepsALeftoverAndTheNewerFileApart: a leftover
// path.restoring and the newer spool file, each with a line that is not
// restored, are both kept, each whole, though kept in the same
// millisecond.
func TestRestoreSpool_KeepsALeftoverAndTheNewerFileApart(t *testing.T) {
	b, _ := start(t, mustLoad(t, typeTrigger("a", "x", "sub", "")), Options{Handlers: map[string]Handler{"sub": newRecorder().handle}})
	path := filepath.Join(t.TempDir(), "spool")
	want := map[string]bool{}
	for file, id := range map[string]string{path + ".restoring": "crashed", path: "newer"} {
		var buf bytes.Buffer
		if err := EncodeSpool(&buf, []Held{{Trigger: "a", Phase: PhaseDeliver, TTL: 255, Event: event(id, "x", "")}}, nil); err != nil {
			t.Fatal(err)
		}
		buf.WriteString("{not json\n")
		want[buf.String()] = true
		if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.RestoreSpool(path); n != 2 || err != nil {
		t.Fatalf("RestoreSpool: %d, %v", n, err)
	}
	kept, _ := filepath.Glob(path + ".kept-*")
	for _, k := range kept {
		got, _ := os.ReadFile(k)
		if !want[string(got)] {
			t.Errorf("kept file %s: %q is not one of the spool files", k, got)
		}
		delete(want, string(got))
	}
	if len(want) != 0 {
		t.Errorf("spool files not kept: %q (kept: %v)", slices.Collect(maps.Keys(want)), kept)
	}
}

// TestSpool_AnEventWithLargeAttributesCostsNoOther: an event posted in
// binary mode carries its attributes as headers, which the body limit does
// not bound, and encoding/json writes each '<', '>' and '&' as 6 bytes: a
// stop can write a line longer than SpoolLineLimit for a small MaxBody.
// That line is not restored (it is kept with the file), but the events
// after it in the file still are.
func TestSpool_AnEventWithLargeAttributesCostsNoOther(t *testing.T) {
	cfg := mustLoad(t, typeTrigger("a", "x", "stuck", ""))
	stuck := newBlocker()
	b, err := New(cfg, Options{MaxBody: 1024, Workers: 1, Handlers: map[string]Handler{"stuck": stuck.handle}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), event("first", "x", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "first in flight", func() bool { return stuck.started.Load() == 1 })
	srv := httptest.NewServer(b.Ingress())
	defer srv.Close()
	req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "big", "ce-source": "s", "ce-type": "x",
		"ce-note": strings.Repeat("<", 30<<10), "content-type": "application/json"} {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("ingress answered %d", resp.StatusCode)
	}
	if err := b.Publish(context.Background(), event("after", "x", "")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	held, _ := b.Shutdown(ctx)
	path := filepath.Join(t.TempDir(), "spool")
	if err := b.SaveSpool(path, held); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); len(data) <= SpoolLineLimit(1024) {
		t.Fatalf("the spool file is %d bytes: no line is longer than the limit", len(data))
	}

	rec := newRecorder()
	b2, reg := start(t, cfg, Options{MaxBody: 1024, Handlers: map[string]Handler{"stuck": rec.handle}})
	if _, err := b2.RestoreSpool(path); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range 2 {
		got[rec.next(t).ID()] = true
	}
	if !got["first"] || !got["after"] {
		t.Errorf("restored %v, want first and after", got)
	}
	if n := counter(t, reg, "dovewarden_broker_spool_events_total", map[string]string{"outcome": spoolInvalid}); n != 1 {
		t.Errorf("invalid counted %v, want 1 (the long line)", n)
	}
	if kept, _ := filepath.Glob(path + ".kept-*"); len(kept) != 1 {
		t.Errorf("kept files: %v", kept)
	}
}
