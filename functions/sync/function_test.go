package function

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

func config(t *testing.T) map[string]string {
	mr := miniredis.RunT(t)
	dove := doveadmtest.NewServer(t, "mail-a", nil)
	return map[string]string{
		"DOVEWARDEN_REDIS_URL":        "redis://" + mr.Addr() + "/0",
		"DOVEWARDEN_DOVEADM_URL":      dove.APIURL(),
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_DESTINATION":      "tcp:mail-b:12345",
		"K_SINK":                      "",
		MetricsListenEnv:              "127.0.0.1:0",
	}
}

// TestMetrics_ServedOnTheirOwnListener: func-go's server sends every path
// but its health checks to the CloudEvent handler, so the sync metrics
// are served on a listener of their own, closed at Stop.
func TestMetrics_ServedOnTheirOwnListener(t *testing.T) {
	f := New()
	if err := f.Start(context.Background(), config(t)); err != nil {
		t.Fatal(err)
	}
	ev, err := contract.FromChange(change.Change{ID: "c1", User: "u1", Host: "mail-a", Time: time.Now(), Priority: change.High, Event: "mail_delivery_finished"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Handle(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + f.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `dovewarden_sync_dsyncs_total{outcome="success",priority="high"} 1`) ||
		!strings.Contains(string(body), "go_goroutines") {
		t.Errorf("GET /metrics: %d\n%s", resp.StatusCode, body)
	}
	if err := f.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + f.MetricsAddr + "/metrics"); err == nil {
		t.Error("the metrics listener still answers after Stop")
	}
}

func TestMetrics_ListenerThatCannotListen(t *testing.T) {
	cfg := config(t)
	cfg[MetricsListenEnv] = "256.0.0.1:1"
	f := New()
	if err := f.Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), MetricsListenEnv) {
		t.Fatalf("Start = %v, want an error naming %s", err, MetricsListenEnv)
	}
}

func TestHandle_ChangeRepliesSucceeded(t *testing.T) {
	// Arrange
	f := New()
	if ok, _ := f.Ready(context.Background()); ok {
		t.Fatal("ready before Start")
	}
	if err := f.Start(context.Background(), config(t)); err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())
	ev, err := contract.FromChange(change.Change{ID: "c1", User: "u1", Host: "mail-a", Time: time.Now(), Priority: change.High, Event: "mail_delivery_finished"})
	if err != nil {
		t.Fatal(err)
	}

	// Act
	reply, err := f.Handle(context.Background(), ev)

	// Assert
	if err != nil || reply == nil || reply.Type() != contract.TypeReplicationSucceeded || reply.Subject() != "u1" {
		t.Fatalf("Handle = %v, %v", reply, err)
	}
	if ok, err := f.Ready(context.Background()); !ok || err != nil {
		t.Errorf("Ready = %v, %v", ok, err)
	}
}

func TestHandle_UnknownTypeIs400(t *testing.T) {
	f := New()
	if err := f.Start(context.Background(), config(t)); err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())
	ev := cloudevents.NewEvent()
	ev.SetID("x")
	ev.SetSource("test")
	ev.SetType("com.example.other")
	_, err := f.Handle(context.Background(), ev)
	if err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("err = %v, want a 400 result", err)
	}
}

func TestStart_RefusesRequestsLongerThanFuncGoAllows(t *testing.T) {
	cfg := config(t)
	cfg["DOVEWARDEN_REQUEST_TIMEOUT"] = "2m"
	cfg["DOVEWARDEN_WRITE_TIMEOUT"] = "5m"
	err := New().Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "func-go") {
		t.Fatalf("err = %v", err)
	}
}
