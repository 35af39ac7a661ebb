package broker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// TestHTTPEndpoint_UnsendableEventIsNotRetried: a subject with CR/LF
// cannot travel as a ce-subject header; every attempt would fail the same
// way, so the outcome is a 400 (dead letter), not a transport error that
// holds a lane slot through minutes of retries.
func TestHTTPEndpoint_UnsendableEventIsNotRetried(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	e := &httpEndpoint{url: srv.URL, client: srv.Client(), maxBody: DefaultMaxBody}

	ev := cloudevents.NewEvent()
	ev.SetID("1")
	ev.SetSource("s")
	ev.SetType("t")
	ev.SetSubject("u1\r\nX-Injected: yes")
	o := e.send(context.Background(), ev, false, toSubscriber, nil)
	if o.ok() || o.retriable() || o.code != http.StatusBadRequest {
		t.Errorf("outcome %+v: want a non-retriable 400", o)
	}
	if hits.Load() != 0 {
		t.Error("the subscriber was contacted")
	}

	ev.SetSubject("u1")
	if o := e.send(context.Background(), ev, false, toSubscriber, nil); !o.ok() {
		t.Errorf("a clean event: %+v", o)
	}
}
