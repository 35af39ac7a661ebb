package function

import (
	"context"
	"net"
	"net/http"
	"testing"
)

// TestMetrics_DefaultPortIsNotKnatives: the function runs in a Knative
// Serving pod beside queue-proxy, in the same network namespace; the ports
// Knative reserves (knative.dev/serving pkg/apis/serving/k8s_validation.go
// reservedPorts) are taken there: 8012, 8013, 8022, 9090 (queue-proxy's
// autoscaler metrics, bound on every address), 9091, 8008, and 8112.
func TestMetrics_DefaultPortIsNotKnatives(t *testing.T) {
	_, port, err := net.SplitHostPort(DefaultMetricsListen)
	if err != nil {
		t.Fatal(err)
	}
	for _, reserved := range []string{"8012", "8013", "8022", "8112", "9090", "9091", "8008", "8080"} {
		if port == reserved {
			t.Errorf("DefaultMetricsListen %s is a port Knative Serving's queue-proxy (or func-go) binds in the same pod", DefaultMetricsListen)
		}
	}
}

// TestStart_Twice: a second Start must not leave the first one's metrics
// listener (and Redis client) open after Stop.
func TestStart_Twice(t *testing.T) {
	f := New()
	if err := f.Start(context.Background(), config(t)); err != nil {
		t.Fatal(err)
	}
	first := f.MetricsAddr
	err2 := f.Start(context.Background(), config(t))
	if err := f.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get("http://" + first + "/metrics"); err == nil {
		resp.Body.Close()
		t.Errorf("after Start, Start (%v) and Stop, the first metrics listener %s still answers", err2, first)
	}
}
