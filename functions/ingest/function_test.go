package function

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

const deliveryEvent = `{"event":"mail_delivery_finished","hostname":"mail-a.test","end_time":"2026-11-29T10:00:00.000001Z","categories":["service:lmtp"],"fields":{"user":"u1","message_id":"<m@test>"}}`

func TestHandle_ForwardsDeliveryToTheSink(t *testing.T) {
	// Arrange: a Broker stand-in and a started instance pointed at it.
	var got atomic.Value
	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Ce-Type") + " " + r.Header.Get("Ce-Subject") + " " + r.Header.Get("Ce-Priority"))
		w.WriteHeader(http.StatusAccepted)
	}))
	defer broker.Close()
	f := New()
	if ok, _ := f.Ready(context.Background()); ok {
		t.Fatal("ready before Start")
	}
	if err := f.Start(context.Background(), map[string]string{"K_SINK": broker.URL}); err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())

	// Act
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(deliveryEvent))
	req.Header.Set("Content-Type", "application/json")
	f.Handle(rec, req)

	// Assert
	if rec.Code != http.StatusAccepted {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if v, _ := got.Load().(string); v != "org.dovewarden.mailbox.changed u1 high" {
		t.Errorf("broker got %q", v)
	}
	if ok, err := f.Ready(context.Background()); !ok || err != nil {
		t.Errorf("Ready = %v, %v", ok, err)
	}
}

func TestHandle_StartRejectsMissingSink(t *testing.T) {
	t.Setenv("K_SINK", "")
	err := New().Start(context.Background(), map[string]string{})
	if err == nil || !strings.Contains(err.Error(), "broker-url") {
		t.Fatalf("Start without a sink: %v", err)
	}
}
