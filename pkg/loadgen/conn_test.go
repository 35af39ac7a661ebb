package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// relaxed is the request timeout of tests that expect no timeouts, long
// enough for a machine busy with other work.
const relaxed = 10 * time.Second

// rawServer accepts connections on loopback and hands each to serve; it
// counts the requests serve reports as read.
func rawServer(t *testing.T, serve func(c net.Conn, br *bufio.Reader, read *atomic.Int64)) (string, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	read := &atomic.Int64{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c, bufio.NewReader(c), read)
			}()
		}
	}()
	return "http://" + l.Addr().String() + "/events", read
}

// readRequest reads one request as a strict server would and checks it.
func readRequest(t *testing.T, br *bufio.Reader) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false // the client closed the connection
	}
	body, err := io.ReadAll(req.Body)
	switch {
	case err != nil:
		t.Errorf("read body: %v", err)
	case req.ContentLength != int64(len(body)) || len(body) == 0:
		t.Errorf("Content-Length %d, body %d bytes", req.ContentLength, len(body))
	case req.Method != http.MethodPost || req.RequestURI != "/events" || req.Proto != "HTTP/1.1":
		t.Errorf("request line %s %s %s", req.Method, req.RequestURI, req.Proto)
	case req.Host == "" || req.Header.Get("Content-Type") != "application/json" || req.Header.Get("User-Agent") == "":
		t.Errorf("headers: Host %q, %v", req.Host, req.Header)
	case !json.Valid(body):
		t.Errorf("invalid JSON body: %s", body)
	}
	return true
}

func TestRun_ReadsEveryKindOfResponseBody(t *testing.T) {
	for name, answer := range map[string]string{
		"content-length": "HTTP/1.1 202 Accepted\r\nContent-Length: 9\r\n\r\naccepted\n",
		"chunked":        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
		"no body":        "HTTP/1.1 204 No Content\r\n\r\n",
		"informational":  "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			var conns atomic.Int64
			url, read := rawServer(t, func(c net.Conn, br *bufio.Reader, read *atomic.Int64) {
				conns.Add(1)
				for readRequest(t, br) {
					read.Add(1)
					io.WriteString(c, answer)
				}
			})
			rep, err := Run(t.Context(), Config{URL: url, Count: 40, Concurrency: 2, Timeout: relaxed})
			if err != nil || rep.OK != 40 || read.Load() != 40 {
				t.Fatalf("error %v, ok %d, server read %d; want 40", err, rep.OK, read.Load())
			}
			// Each worker dials when it first sends; one may have taken
			// every request before the other started.
			if conns.Load() > 2 {
				t.Errorf("%d connections, want at most 2, kept alive", conns.Load())
			}
		})
	}
}

func TestRun_ReconnectsWhenTheServerCloses(t *testing.T) {
	for name, answer := range map[string]string{
		// The server says so, or an HTTP/1.0 answer without keep-alive.
		"connection close": "HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
		"http/1.0":         "HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n",
		// The body ends when the connection does.
		"close-delimited": "HTTP/1.1 200 OK\r\n\r\nok",
		// The server closes without saying so, as after an idle timeout:
		// the next request on the connection finds it closed.
		"silently": "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			url, read := rawServer(t, func(c net.Conn, br *bufio.Reader, read *atomic.Int64) {
				if readRequest(t, br) {
					read.Add(1)
					io.WriteString(c, answer)
					time.Sleep(5 * time.Millisecond) // let the client write its next request first
				}
			})
			rep, err := Run(t.Context(), Config{URL: url, Count: 30, Concurrency: 2, Timeout: relaxed})
			if err != nil || rep.OK != 30 {
				t.Fatalf("error %v, ok %d, want 30", err, rep.OK)
			}
			// A request the closing server never read was sent again, and
			// only that one: the server read each request once.
			if read.Load() != 30 {
				t.Errorf("server read %d requests, want 30", read.Load())
			}
		})
	}
}

func TestRun_CountsAServerThatHangsUpAsAnError(t *testing.T) {
	// Reads the request, then closes without answering, every time: the
	// request is not retried on a fresh connection, so this is an error.
	url, read := rawServer(t, func(c net.Conn, br *bufio.Reader, read *atomic.Int64) {
		if readRequest(t, br) {
			read.Add(1)
		}
	})
	rep, err := Run(t.Context(), Config{URL: url, Count: 5, AllowErrors: true, Timeout: relaxed})
	if err != nil || rep.Errors != 5 || rep.FirstError == "" {
		t.Fatalf("error %v, transport errors %d (first %q); want 5", err, rep.Errors, rep.FirstError)
	}
	if read.Load() > 10 {
		t.Errorf("server read %d requests for 5 sent; want at most one retry each", read.Load())
	}
}

func TestRun_CancelStopsAStuckRequest(t *testing.T) {
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read the body so the server notices the client leaving.
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	defer stuck.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, Config{URL: stuck.URL + "/events", Duration: time.Hour, Timeout: time.Hour, Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("took %v after the cancel", took)
	}
	if !rep.Interrupted || rep.Sent != 3 || rep.Canceled != 3 || rep.Failed() != 0 {
		t.Fatalf("interrupted %v, sent %d, canceled %d, failed %d; want 3 canceled", rep.Interrupted, rep.Sent, rep.Canceled, rep.Failed())
	}
}

func TestRequestHead(t *testing.T) {
	cfg := Config{Token: "tok"}
	u, _, err := checkTarget(t.Context(), "http://u:p@127.0.0.1:8080/events?x=1", false)
	if err != nil {
		t.Fatal(err)
	}
	header, bare := requestHeader(cfg, u)
	body := `{"event":"x"}`
	req, err := http.ReadRequest(bufio.NewReader(
		io.MultiReader(bytes.NewReader(requestHead(header, bare)), strings.NewReader(strconv.Itoa(len(body))+"\r\n\r\n"+body))))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(req.Body)
	if req.Host != "127.0.0.1:8080" || req.RequestURI != "/events?x=1" || string(got) != body ||
		req.Header.Get("Authorization") != "Bearer tok" || req.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("parsed %s %s host %q headers %v body %q", req.Method, req.RequestURI, req.Host, req.Header, got)
	}
}
