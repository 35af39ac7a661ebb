package syncer

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

func serveAsync(t *testing.T, ctx context.Context, o server.Options, wt time.Duration, h http.Handler) (string, chan error) {
	t.Helper()
	addrc, errc := make(chan string, 1), make(chan error, 1)
	go func() {
		o.WriteTimeout = wt
		errc <- server.Serve(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), o, h, func(a net.Addr) { addrc <- a.String() })
	}()
	select {
	case a := <-addrc:
		return "http://" + a, errc
	case err := <-errc:
		t.Fatalf("serve: %v", err)
	}
	return "", nil
}

func TestServe_WriteTimeoutIsConfigurable(t *testing.T) {
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "done")
	})
	o := server.Options{Listen: "127.0.0.1:0", ShutdownTimeout: time.Second}
	for _, tt := range []struct {
		wt time.Duration
		ok bool
	}{{100 * time.Millisecond, false}, {5 * time.Second, true}} {
		ctx, cancel := context.WithCancel(context.Background())
		url, errc := serveAsync(t, ctx, o, tt.wt, slow)
		resp, err := http.Get(url)
		got := err == nil
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			got = rerr == nil && string(b) == "done"
		}
		if got != tt.ok {
			t.Errorf("write timeout %s: response arrived = %v, want %v", tt.wt, got, tt.ok)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

func TestServe_ShutdownHandsBackRunningDsyncs(t *testing.T) {
	f := newFixture(t)
	f.dove.Latency = 10 * time.Second
	started := make(chan struct{}, 1)
	f.dove.OnStart = func(doveadmtest.Call) { started <- struct{}{} }
	ctx, cancel := context.WithCancel(context.Background())
	url, errc := serveAsync(t, ctx, server.Options{Listen: "127.0.0.1:0", ShutdownTimeout: 100 * time.Millisecond}, time.Minute, f.h)

	req, err := cloudevents.NewHTTPRequestFromEvent(context.Background(), url, changeEvent(t, "u1", time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
		}
		respc <- resp
	}()
	<-started
	cancel() // SIGTERM

	resp := <-respc
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("in-flight request: %+v, want 503 so the Broker redelivers", resp)
	}
	if err := <-errc; err != nil {
		t.Errorf("serve: %v", err)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if st.InProgress || st.PendingSince.IsZero() {
		t.Errorf("status %+v: want the lock released and the change pending", st)
	}
	if f.mr.Exists(state.LockKey("u1")) {
		t.Error("lock left behind")
	}
}
