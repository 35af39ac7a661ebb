package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// net/http's error lines are counted by kind, and logged at most
// errLogBurst times a minute per kind; the next line logged says how
// many were left out.
func TestServerErrors_CountedAndLoggedAFewTimesAMinute(t *testing.T) {
	var logs safebuf.Buffer
	e := newServerErrors(slog.New(slog.NewTextHandler(&logs, nil)))
	now := time.Unix(1000, 0)
	e.lines.WithClock(func() time.Time { return now })
	for range 8 {
		io.WriteString(e, "http: TLS handshake error from 192.0.2.9:4000: EOF\n")
	}
	io.WriteString(e, "http: panic serving 192.0.2.9:4001: boom\n")
	if got := strings.Count(logs.String(), "TLS handshake error"); got != errLogBurst {
		t.Errorf("handshake errors logged: %d, want %d", got, errLogBurst)
	}
	if !strings.Contains(logs.String(), "panic serving") {
		t.Error("another kind was left out with the handshake errors")
	}
	now = now.Add(61 * time.Second)
	io.WriteString(e, "http: TLS handshake error from 192.0.2.9:4002: EOF\n")
	if !strings.Contains(logs.String(), "left_out_before=3") {
		t.Errorf("the next minute's first line does not say 3 were left out:\n%s", logs.String())
	}
	if got := testutil.ToFloat64(e.count.WithLabelValues("tls_handshake")); got != 9 {
		t.Errorf("handshake errors counted: %v, want 9", got)
	}
	if got := testutil.ToFloat64(e.count.WithLabelValues("other")); got != 1 {
		t.Errorf("other errors counted: %v, want 1", got)
	}
}

// A client that fails the handshake of an HTTPS listener is counted in
// its metrics, and the listener serves on.
func TestServeListener_CountsFailedHandshakes(t *testing.T) {
	kp, client := testKeyPair(t, "mail.test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done, ready := make(chan error, 1), make(chan struct{})
	go func() {
		done <- ServeListener(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)),
			Options{ShutdownTimeout: time.Second, KeyPair: kp, Metrics: reg, MaxConnections: 16}, ln,
			http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }), func(net.Addr) { close(ready) })
	}()
	<-ready
	defer func() { cancel(); <-done }()
	addr := ln.Addr().String()
	for range 3 {
		// Plain HTTP to the HTTPS port.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		io.ReadAll(c)
		c.Close()
	}
	waitFor(t, "three failed handshakes counted", func() bool {
		return metricValue(t, reg, "dovewarden_http_server_errors_total", "tls_handshake") == 3
	})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: client}, Timeout: 5 * time.Second}
	resp, err := hc.Get("https://" + addr + "/")
	if err != nil {
		t.Fatalf("a client that trusts the certificate, after the failed ones: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Errorf("served %q", body)
	}
}
