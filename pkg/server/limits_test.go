package server

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dovewarden/dovewarden-knative/internal/testcert"
)

// serveOK serves an "ok" handler with o on a loopback port until the test
// ends, and returns the address.
func serveOK(t *testing.T, o Options) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	o.ShutdownTimeout = time.Second
	go func() {
		done <- ServeListener(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), o, ln,
			http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }), func(net.Addr) { close(ready) })
	}()
	<-ready
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	})
	return ln.Addr().String()
}

// TestServeListener_RefusesOversizedHeaders: headers are read before any
// handler or credentials check; beyond what a client of dovewarden sends,
// the answer is 431, not a megabyte of memory per connection.
func TestServeListener_RefusesOversizedHeaders(t *testing.T) {
	addr := serveOK(t, Options{})
	for _, tc := range []struct {
		lines int
		want  int
	}{{8, http.StatusOK}, {128, http.StatusRequestHeaderFieldsTooLarge}} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: x\r\n%s\r\n", strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\r\n", tc.lines))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%d KiB of headers: %d, want %d", tc.lines, resp.StatusCode, tc.want)
		}
	}
}

// TestServeListener_TLSIsHTTP1Only: a client that offers HTTP/2 gets
// HTTP/1.1, so that the stop's end of a stalled read closes one request's
// connection, not every stream of an HTTP/2 one.
func TestServeListener_TLSIsHTTP1Only(t *testing.T) {
	kp, client := testKeyPair(t, "mail.test")
	addr := serveOK(t, Options{KeyPair: kp})
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: client, ForceAttemptHTTP2: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Proto != "HTTP/1.1" {
		t.Errorf("served %s, want HTTP/1.1", resp.Proto)
	}
}

// TestKeyPair_ScrapesLookAtTheFiles: the files are looked at on a scrape
// too, not only at a handshake: with every client on a kept connection
// (a scraper's own included), a renewal still shows in the expiry gauge,
// a bad one in the failing gauge, and pointing the files back at the
// served pair (a renewal rolled back) ends the failing.
func TestKeyPair_ScrapesLookAtTheFiles(t *testing.T) {
	dir, issued := t.TempDir(), t.TempDir()
	ca, err := testcert.NewCA(issued)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string, valid time.Duration) (cert, key string) {
		t.Helper()
		cert, key, err := ca.Issue(issued, testcert.Leaf{Name: name, Hosts: []string{"mail.test"}, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			NotAfter: time.Now().Add(valid).Truncate(time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	link := func(target, name string) { // as certbot's live folder points into its archive
		t.Helper()
		tmp := filepath.Join(dir, ".tmp")
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	certA, keyA := issue("a", time.Hour)
	link(certA, "tls.crt")
	link(keyA, "tls.key")
	kp, err := LoadKeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cs := kp.Collectors()
	expires, failing := cs[0], cs[2]
	scrape := func(step string, wantExpires time.Time, wantFailing float64) {
		t.Helper()
		if got := testutil.ToFloat64(expires); got != float64(wantExpires.Unix()) {
			t.Errorf("%s: expiry %v, want %v", step, got, wantExpires.Unix())
		}
		if got := testutil.ToFloat64(failing); got != wantFailing {
			t.Errorf("%s: failing %v, want %v", step, got, wantFailing)
		}
	}
	scrape("at start", leafOf(t, certA).NotAfter, 0)

	certB, keyB := issue("b", 48*time.Hour)
	link(keyB, "tls.key")
	link(certB, "tls.crt")
	scrape("renewed", leafOf(t, certB).NotAfter, 0)

	bad := filepath.Join(issued, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link(bad, "tls.crt")
	scrape("a renewal gone wrong", leafOf(t, certB).NotAfter, 1)
	link(certB, "tls.crt")
	scrape("rolled back to the served pair", leafOf(t, certB).NotAfter, 0)

	// The served certificate is still the one the handshakes get.
	if got := kp.Served()[0]; string(got) != string(leafOf(t, certB).Raw) {
		t.Error("a scrape changed what is served")
	}
}
