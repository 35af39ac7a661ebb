package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// TestServeListener_StopDoesNotWaitForConnectionsThatSentNothing: at a
// stop, a connection no byte arrived on (a client's spare pooled one) is
// closed at once, while a request that has begun to arrive is still served
// to its end. With a shutdown timeout under net/http's 5 s for new
// connections, the stop is clean: it never has to cancel requests. Over
// TLS too, where the spare connection has sent its handshake and then
// nothing.
func TestServeListener_StopDoesNotWaitForConnectionsThatSentNothing(t *testing.T) {
	kp, client := testKeyPair(t, "mail.test")
	for _, tc := range []struct {
		name   string
		kp     *KeyPair
		dial   func(addr string) (net.Conn, error)
		scheme string
		http   *http.Client
	}{
		{"plain", nil, func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }, "http", http.DefaultClient},
		{"tls", kp, func(addr string) (net.Conn, error) { return tls.Dial("tcp", addr, client) }, "https",
			&http.Client{Transport: &http.Transport{TLSClientConfig: client}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var logs safebuf.Buffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			posted := make(chan struct{}, 1) // the begun request's headers read
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost {
					posted <- struct{}{}
				}
				body, _ := io.ReadAll(r.Body)
				w.Write([]byte("got " + string(body)))
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			ready := make(chan struct{})
			go func() {
				done <- ServeListener(ctx, log, Options{ShutdownTimeout: 2 * time.Second, KeyPair: tc.kp}, ln, h, func(net.Addr) { close(ready) })
			}()
			<-ready

			silent, err := tc.dial(ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer silent.Close()
			begun, err := tc.dial(ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer begun.Close()
			// Headers now, the body after the stop began.
			if _, err := io.WriteString(begun, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			// Both connections accepted: a third one's request is answered
			// after theirs were.
			if resp, err := tc.http.Get(tc.scheme + "://" + ln.Addr().String() + "/"); err != nil {
				t.Fatal(err)
			} else {
				resp.Body.Close()
			}
			select {
			case <-posted:
			case <-time.After(10 * time.Second):
				t.Fatal("the begun request's headers were not read")
			}
			if tc.kp != nil {
				time.Sleep(tlsQuiet + 100*time.Millisecond) // the handshake's bytes were the last
			}

			cancel()
			silent.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := silent.Read(make([]byte, 1)); err == nil || n != 0 {
				t.Errorf("the silent connection: read %d bytes, %v; want it closed", n, err)
			}
			if _, err := io.WriteString(begun, "hello"); err != nil {
				t.Fatal(err)
			}
			begun.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(begun), nil)
			if err != nil {
				t.Fatalf("the begun request got no answer: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if string(body) != "got hello" {
				t.Errorf("the begun request: %d %q", resp.StatusCode, body)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("ServeListener: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("ServeListener did not return")
			}
			if strings.Contains(logs.String(), "requests still running") {
				t.Errorf("the stop had to cancel requests:\n%s", logs.String())
			}
		})
	}
}

// TestServeListener_AStalledBodyDoesNotHoldTheStop: a client that sent
// part of a body and then nothing holds its handler in a read no context
// cancels; past the shutdown timeout that read fails, the handler answers,
// and the stop is clean (it used to wait out the drain and fail). Over TLS
// too, where the server sees the TLS connection around the TCP one.
func TestServeListener_AStalledBodyDoesNotHoldTheStop(t *testing.T) {
	kp, client := testKeyPair(t, "mail.test")
	for _, tc := range []struct {
		name string
		kp   *KeyPair
		dial func(addr string) (net.Conn, error)
	}{
		{"plain", nil, func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }},
		{"tls", kp, func(addr string) (net.Conn, error) { return tls.Dial("tcp", addr, client) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			reading := make(chan struct{}, 1)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reading <- struct{}{}
				if _, err := io.ReadAll(r.Body); err != nil {
					http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
				}
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			ready := make(chan struct{})
			go func() {
				done <- ServeListener(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{ShutdownTimeout: 200 * time.Millisecond, KeyPair: tc.kp}, ln, h,
					func(net.Addr) { close(ready) })
			}()
			<-ready
			stalled, err := tc.dial(ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer stalled.Close()
			if _, err := io.WriteString(stalled, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"); err != nil {
				t.Fatal(err)
			}
			<-reading

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("ServeListener: %v; want a clean stop", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("ServeListener did not return")
			}
			stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
			if resp, err := http.ReadResponse(bufio.NewReader(stalled), nil); err != nil || resp.StatusCode != http.StatusBadRequest {
				t.Errorf("the stalled client got %v, %v; want its 400", resp, err)
			}
		})
	}
}

// TestHealth_OtherMethodsAre405: beside a catch-all "/" (ingest's, a
// broker's ingress), a POST to /healthz, /readyz or /metrics is answered
// 405, not handed to the catch-all.
func TestHealth_OtherMethodsAre405(t *testing.T) {
	var h Health
	mux := http.NewServeMux()
	h.Mount(mux, metrics.NewRegistry(), nil)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "catch-all", http.StatusNotFound) })
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest(http.MethodPost, path, nil))
		if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("POST %s: %d %q, Allow %q", path, w.Code, w.Body, w.Header().Get("Allow"))
		}
	}
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest(http.MethodHead, "/healthz", nil))
	if w.Code != http.StatusOK {
		t.Errorf("HEAD /healthz: %d", w.Code)
	}
}

// TestServeListener_AStopDoesNotWaitForASpareTLSConnectionJustMade: a
// TLS connection whose handshake ended just before the stop, and which
// then sends nothing (a client's spare pooled connection), is closed
// once it has been quiet for tlsQuiet, not left to net/http, which waits
// 5 s for a new connection: with a shutdown timeout under that, the stop
// had to cancel requests, though none was running.
func TestServeListener_AStopDoesNotWaitForASpareTLSConnectionJustMade(t *testing.T) {
	kp, client := testKeyPair(t, "mail.test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs safebuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- ServeListener(ctx, log, Options{ShutdownTimeout: 4 * time.Second, KeyPair: kp}, ln,
			http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), func(net.Addr) { close(ready) })
	}()
	<-ready
	spare, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		t.Fatal(err)
	}
	defer spare.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ServeListener did not return")
	}
	if strings.Contains(logs.String(), "requests still running") {
		t.Errorf("the stop had to cancel requests:\n%s", logs.String())
	}
	spare.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := spare.Read(make([]byte, 1)); err == nil {
		t.Errorf("the spare connection is still open (read %d bytes)", n)
	}
}
