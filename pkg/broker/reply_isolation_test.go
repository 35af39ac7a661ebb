package broker

import (
	"context"
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// failedReply answers every event as the sync function does when a dsync
// failed for good: 200 with a replication.failed reply.
func failedReply(_ int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
	r := cloudevents.NewEvent()
	r.SetID("failed-" + ev.ID())
	r.SetSource("dovewarden/sync")
	r.SetType(typeFailed)
	r.SetSubject(ev.Subject())
	r.SetExtension("retryby", "sweep")
	return &r, nil
}

// TestReplies_StuckAlertWebhookNeverBlocksTheSyncLanes: with the real
// manifests, the alert webhook (the replication-failed-alert Trigger's
// subscriber) hangs and its lane fills up with failure events; the sync
// lanes' replies that match it must not then hold the sync lanes' places
// (invariant 4): new mail is still taken and replicated at once.
func TestReplies_StuckAlertWebhookNeverBlocksTheSyncLanes(t *testing.T) {
	cfg := loadEmbedded(t)
	alerts := newBlocker()
	defer close(alerts.release)
	sync := newRecorder()
	sync.answer = failedReply
	var logs safebuf.Buffer
	b, reg := start(t, cfg, Options{QueueSize: 3, Workers: 1, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Handlers: map[string]Handler{
		"dovewarden-sync-high": sync.handle, "dovewarden-sync-low": sync.handle, "dovewarden-alerts": alerts.handle,
	}})
	ctx := context.Background()
	for i := range 20 {
		start := time.Now()
		if err := b.Publish(ctx, event("high-"+strconv.Itoa(i), typeChanged, "high")); err != nil {
			t.Fatalf("new mail %d refused while the alert webhook hangs: %v", i, err)
		}
		sync.next(t)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("new mail %d took %v behind a stuck alert webhook", i, d)
		}
	}
	// The alert lane holds what it has room for (3 queued, 1 in its
	// worker); the other replies are dropped for it, and counted.
	eventually(t, "replies dropped for the full alert lane counted", func() bool {
		return counter(t, reg, "dovewarden_broker_events_dropped_total",
			map[string]string{"trigger": "replication-failed-alert", "reason": dropQueueFull}) == 16
	})
	if got := counter(t, reg, "dovewarden_broker_events_rejected_total", map[string]string{"trigger": "replication-failed-alert"}); got != 16 {
		t.Errorf("rejected %v, want 16", got)
	}
	// Logged 5 times a minute, not at every reply.
	if n := strings.Count(logs.String(), "reply dropped for this Trigger"); n != 5 {
		t.Errorf("%d lines for 16 dropped replies, want 5:\n%s", n, logs.String())
	}
	// A reply is counted after its publish, which counts the drop: wait
	// for the last one.
	eventually(t, "the 20 replies counted", func() bool {
		return counter(t, reg, "dovewarden_broker_replies_total", map[string]string{"trigger": "sync-high"}) == 20
	})
	// Published: the 4 replies the alert lane took, not the 16 it dropped.
	if got := counter(t, reg, "dovewarden_broker_events_published_total", map[string]string{"source": "reply"}); got != 4 {
		t.Errorf("replies published %v, want 4", got)
	}
	if got := alerts.started.Load(); got != 1 {
		t.Errorf("alert webhook got %d deliveries, want 1 (its only worker is stuck)", got)
	}
	eventually(t, "sync-high to hold nothing", func() bool {
		for _, l := range b.Lanes() {
			if l.Trigger == "sync-high" && l.Queued+l.InFlight != 0 {
				return false
			}
		}
		return true
	})
}

// TestDeadLetter_StuckSinkNeverHoldsTheLanesWorkers: with the real
// manifests the alert webhook is also the sync lanes' dead-letter sink.
// When it hangs, events the sync function refuses for good (400: bad
// input) wait for it, but not in the workers that deliver new mail
// (invariant 5: bad input never blocks).
func TestDeadLetter_StuckSinkNeverHoldsTheLanesWorkers(t *testing.T) {
	cfg := loadEmbedded(t)
	alerts := newBlocker()
	sync := newRecorder()
	sync.answer = func(_ int, ev cloudevents.Event) (*cloudevents.Event, protocol.Result) {
		if ev.Subject() == "bad" {
			return nil, cehttp.NewResult(400, "bad user")
		}
		return nil, nil
	}
	b, reg := start(t, cfg, Options{Workers: 2, Handlers: map[string]Handler{
		"dovewarden-sync-high": sync.handle, "dovewarden-sync-low": sync.handle, "dovewarden-alerts": alerts.handle,
	}})
	ctx := context.Background()
	for i := range 4 {
		ev := event("bad-"+strconv.Itoa(i), typeChanged, "high")
		ev.SetSubject("bad")
		if err := b.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		sync.next(t)
	}
	eventually(t, "the dead-letter sink holds the bad events", func() bool { return alerts.started.Load() >= 2 })
	for i := range 10 {
		if err := b.Publish(ctx, event("high-"+strconv.Itoa(i), typeChanged, "high")); err != nil {
			t.Fatal(err)
		}
		if got := sync.next(t); got.ID() != "high-"+strconv.Itoa(i) {
			t.Fatalf("got %s", got.ID())
		}
	}
	// The sink still gets them all once it answers.
	close(alerts.release)
	eventually(t, "the bad events dead-lettered", func() bool {
		return counter(t, reg, "dovewarden_broker_dead_lettered_total", map[string]string{"trigger": "sync-high"}) == 4
	})
}

// TestDeadLetter_ErrorDestShowsNoPassword: a subscriber URL with
// credentials (a webhook behind basic auth, a token in its query) fails;
// the dead-letter sink, often another service that logs what it gets, is
// told where the event failed without them, as the broker's logs and
// status are.
func TestDeadLetter_ErrorDestShowsNoPassword(t *testing.T) {
	_, answers := newHTTPSubscriber(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadRequest) })
	// A webhook whose refusal quotes the request: the data it answers
	// is the dead-letter sink's too.
	_, quotes := newHTTPSubscriber(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no access for "+r.URL.String()+" with "+r.Header.Get("Authorization"), http.StatusForbidden)
	})
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // a refused connection
	for name, tc := range map[string]struct {
		url, code string
	}{
		"answers 400":        {answers, "400"},
		"refused":            {gone.URL, "500"},
		"quotes the request": {quotes, "403"},
	} {
		t.Run(name, func(t *testing.T) {
			hook := strings.Replace(tc.url, "http://", "http://alerts:s3cret@", 1) + "/hook?token=t0ken"
			cfg := mustLoad(t, typeTrigger("t", typeFailed, "hook", "  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: dls\n"))
			dls := newRecorder()
			b, _ := start(t, cfg, Options{Subscribers: map[string]string{"hook": hook}, Handlers: map[string]Handler{"dls": dls.handle}})
			if err := b.Publish(context.Background(), event("f1", typeFailed, "high")); err != nil {
				t.Fatal(err)
			}
			got := dls.next(t)
			dest, _ := got.Extensions()[ExtErrorDest].(string)
			raw, _ := got.Extensions()[ExtErrorData].(string)
			data, err := base64.StdEncoding.DecodeString(raw)
			if err != nil {
				t.Fatalf("%s %q: %v", ExtErrorData, raw, err)
			}
			for _, secret := range []string{"s3cret", "t0ken", base64.StdEncoding.EncodeToString([]byte("alerts:s3cret"))} {
				if strings.Contains(dest, secret) || strings.Contains(string(data), secret) {
					t.Errorf("%s = %q, %s = %q: hold %s", ExtErrorDest, dest, ExtErrorData, data, secret)
				}
			}
			if !strings.HasSuffix(strings.SplitN(dest, "?", 2)[0], "/hook") || got.Extensions()[ExtErrorCode] != tc.code {
				t.Errorf("%s = %q, %s = %v: want the webhook's URL and %s", ExtErrorDest, dest, ExtErrorCode, got.Extensions()[ExtErrorCode], tc.code)
			}
		})
	}
}
