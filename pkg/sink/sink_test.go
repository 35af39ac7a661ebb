package sink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cecontext "github.com/cloudevents/sdk-go/v2/context"
)

func TestParseOverrides(t *testing.T) {
	ov, err := ParseOverrides(`{"extensions":{"cluster":"eu1","tier":"gold"}}`)
	if err != nil || ov["cluster"] != "eu1" || ov["tier"] != "gold" {
		t.Fatalf("%v %v", ov, err)
	}
	if ov, err := ParseOverrides(""); err != nil || ov != nil {
		t.Errorf("empty: %v %v", ov, err)
	}
	// The Triggers' and Kafka's own extensions, and values Knative would
	// not set (it sets strings), are refused.
	for _, bad := range []string{"{", `{"extensions":{"Bad-Name":"x"}}`, `{"extensions":[1]}`,
		`{"extensions":{"priority":"low"}}`, `{"extensions":{"partitionkey":""}}`, `{"extensions":{"retryby":"x"}}`,
		`{"extensions":{"priority":null}}`, `{"extensions":{"n":1.5}}`} {
		if _, err := ParseOverrides(bad); err == nil || !strings.Contains(err.Error(), "K_CE_OVERRIDES") {
			t.Errorf("ParseOverrides(%q) = %v", bad, err)
		}
	}
}

func TestNew_RejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "broker", "ftp://b/", "http://"} {
		if _, err := New(Options{URL: u, Budget: time.Second}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

// Authorization is sent with every post; a password in the URL goes as
// Basic auth; without either no Authorization header is sent.
func TestSend_Authorization(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Authorization")
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	withUser := strings.Replace(srv.URL, "http://", "http://dovecot:s3cret@", 1)
	for _, tc := range []struct{ url, auth, want string }{
		{srv.URL, "Bearer tok", "Bearer tok"},
		{withUser, "", "Basic ZG92ZWNvdDpzM2NyZXQ="},
		{srv.URL, "", ""},
	} {
		s, err := New(Options{URL: tc.url, Budget: 2 * time.Second, Authorization: tc.auth})
		if err != nil {
			t.Fatal(err)
		}
		ev := cloudevents.NewEvent()
		ev.SetID("1")
		ev.SetType("org.dovewarden.test")
		ev.SetSource("test")
		if err := s.Send(context.Background(), ev); err != nil {
			t.Fatalf("send with %q: %v", tc.auth, err)
		}
		if h := <-got; h != tc.want {
			t.Errorf("Authorization %q, want %q", h, tc.want)
		}
	}
}

func testEvent() cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID("1")
	ev.SetType("org.dovewarden.test")
	ev.SetSource("test")
	return ev
}

// TestSend_ThePasswordStaysOutOfErrorsAndTarget: ingest logs Target at
// start and every failed send's error; a password in the URL is in
// neither.
func TestSend_ThePasswordStaysOutOfErrorsAndTarget(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "queue full", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	s, err := New(Options{URL: strings.Replace(srv.URL, "http://", "http://dovecot:s3cretPW@", 1), Budget: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Send(context.Background(), testEvent())
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Send against a 503: %v", err)
	}
	for _, text := range []string{err.Error(), s.Target()} {
		if strings.Contains(text, "s3cretPW") || !strings.Contains(text, "dovecot:") {
			t.Errorf("%q: want the user, not the password", text)
		}
	}
}

// TestSend_ErrorsQuoteNoSecretAndNoWholePage: a token in K_SINK's query
// is redacted in a transport error too (the transport spells the URL it
// posted to), and a Broker's long error page is quoted in part.
func TestSend_ErrorsQuoteNoSecretAndNoWholePage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on
	s, err := New(Options{URL: "http://" + addr + "/default/broker?access_token=TOK3N", Budget: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), testEvent()); err == nil || strings.Contains(err.Error(), "TOK3N") {
		t.Errorf("Send to a closed port: %v; want an error without the token", err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, strings.Repeat("<html>proxy error</html>", 10000), http.StatusBadGateway)
	}))
	defer srv.Close()
	s, err = New(Options{URL: srv.URL, Budget: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), testEvent()); err == nil || !strings.Contains(err.Error(), "502") || len(err.Error()) > 1024 {
		t.Errorf("Send against a 240 KB error page: an error of %d bytes, want it quoted in part", len(fmt.Sprint(err)))
	}
}

// TestSend_KeepsItsConnection: answers with a short body (a 503 "queue
// full" before a retry, a 202 "ok") leave the connection open for the
// next request, instead of a new connection (and TLS handshake) each, at
// the moment the Broker is busiest.
func TestSend_KeepsItsConnection(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 != 0 {
			http.Error(w, "queue full", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte("ok"))
	}))
	var conns atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	s, err := New(Options{URL: srv.URL, Budget: 5 * time.Second, Retries: 3, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := s.Send(context.Background(), testEvent()); err != nil {
			t.Fatal(err)
		}
	}
	if got := conns.Load(); got != 1 {
		t.Errorf("%d connections for 10 events (30 requests), want 1", got)
	}
}

// TestSend_ARedirectIsNoDelivery: a 302 (a proxy's login page, say) is a
// failure; followed, it became a GET answered 200, and the event was lost
// though Send said it was delivered.
func TestSend_ARedirectIsNoDelivery(t *testing.T) {
	var gets int
	mux := http.NewServeMux()
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/login", http.StatusFound) })
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) { gets++ })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	s, err := New(Options{URL: srv.URL + "/", Budget: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), testEvent()); err == nil || !strings.Contains(err.Error(), "302") || gets != 0 {
		t.Errorf("Send = %v after %d GETs of the login page; want a failure naming the 302", err, gets)
	}
}

// TestSend_RetriesWhatCanRecover: a Broker's 413 (the event is larger
// than it takes) or 400 is final, asked once; a 500, 503 or 429 is asked
// again. A retried 413 spent the whole send budget, which Dovecot's
// exporter waits for, on an answer that cannot change.
func TestSend_RetriesWhatCanRecover(t *testing.T) {
	for code, want := range map[int]int{413: 1, 400: 1, 500: 4, 503: 4, 429: 4} {
		var asked atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			asked.Add(1)
			w.WriteHeader(code)
		}))
		s, err := New(Options{URL: srv.URL, Budget: 5 * time.Second, Retries: 3, Backoff: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		err = s.Send(context.Background(), testEvent())
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(code)) {
			t.Errorf("HTTP %d: Send = %v, want a failure naming it", code, err)
		}
		if got := asked.Load(); got != int64(want) {
			t.Errorf("HTTP %d: asked %d times, want %d", code, got, want)
		}
	}
}

// TestSend_TinyBackoffRetries: a backoff of a nanosecond (half of it is 0,
// the SDK's period) still retries and fails, rather than panic in the
// SDK's ticker: a panic lost the change, net/http dropping the
// connection, with no 503 to Dovecot and no pending mark.
func TestSend_TinyBackoffRetries(t *testing.T) {
	var tries atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tries.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	s, err := New(Options{URL: srv.URL, Budget: time.Second, Retries: 3, Backoff: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), testEvent()); err == nil || tries.Load() != 4 {
		t.Errorf("Send: %v after %d tries, want an error after 4", err, tries.Load())
	}
}

// TestSend_RetryDelays: the first retry waits --send-backoff, each further
// one twice as long (as docs/configuration.md says), not twice that.
func TestSend_RetryDelays(t *testing.T) {
	s, err := New(Options{URL: "http://127.0.0.1:1/", Budget: time.Second, Retries: 3, Backoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p := cecontext.RetriesFrom(s.withRetries(context.Background()))
	if p.MaxTries != 3 {
		t.Errorf("max tries %d", p.MaxTries)
	}
	// The SDK asks for the delay before retry n as BackoffFor(n), n from 1.
	for n, want := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond} {
		if got := p.BackoffFor(n + 1); got != want {
			t.Errorf("delay before retry %d: %v, want %v", n+1, got, want)
		}
	}
}

// K_CA_CERTS (Options.CACerts): an https Broker whose certificate a
// private CA signs, as with Knative's transport encryption, is trusted
// through it; without it the send fails; TLSConfig wins over it.
func TestSend_KnativeCACerts(t *testing.T) {
	var got atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	send := func(o Options) error {
		o.URL, o.Budget = srv.URL, 2*time.Second
		s, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		return s.Send(context.Background(), testEvent())
	}
	if err := send(Options{CACerts: caPEM}); err != nil {
		t.Fatalf("with K_CA_CERTS: %v", err)
	}
	if err := send(Options{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without K_CA_CERTS: %v, want a certificate error", err)
	}
	if err := send(Options{CACerts: caPEM, TLSConfig: &tls.Config{RootCAs: x509.NewCertPool()}}); err == nil {
		t.Error("TLSConfig did not win over K_CA_CERTS")
	}
	if n := got.Load(); n != 1 {
		t.Errorf("the Broker got %d events, want 1", n)
	}
	for _, bad := range []string{"not a certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"} {
		if _, err := New(Options{URL: srv.URL, Budget: time.Second, CACerts: bad}); err == nil || !strings.Contains(err.Error(), "K_CA_CERTS") {
			t.Errorf("New with K_CA_CERTS %q: %v", bad, err)
		}
	}
}

// TestSend_ErrorsShowNoSecretSent: neither a transport error, which
// spells the URL with net/http's own masking of the password (not of a
// token in the query), nor a Broker's refusal that quotes the request
// back (its URL, its Authorization header) shows a secret sent.
func TestSend_ErrorsShowNoSecretSent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, fmt.Sprintf("no access for %s with %s", r.URL, r.Header.Get("Authorization")), http.StatusForbidden)
	}))
	defer echo.Close()
	secrets := []string{"pa55word", "TOK3N", "BEAR3R",
		base64.StdEncoding.EncodeToString([]byte("dovecot:pa55word")), base64.StdEncoding.EncodeToString([]byte("dovecot:pa@ss")),
		base64.StdEncoding.EncodeToString([]byte("TOK3N:"))}
	for _, host := range []string{refused, strings.TrimPrefix(echo.URL, "http://")} {
		for _, o := range []Options{
			{URL: "http://dovecot:pa55word@" + host + "/default/broker?access_token=TOK3N"},
			{URL: "http://dovecot:pa%40ss@" + host + "/default/broker?x-token=TOK3N"},
			{URL: "http://" + host + "/default/broker?access_token=TOK3N", Authorization: "Bearer BEAR3R"},
			{URL: "http://TOK3N@" + host + "/default/broker"},
		} {
			o.Budget = time.Second
			s, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Send(context.Background(), testEvent())
			if err == nil {
				t.Fatalf("%s: sent", o.URL)
			}
			for _, sec := range append(secrets, "pa@ss", "pa%40ss") {
				if strings.Contains(err.Error(), sec) {
					t.Errorf("%s: the error shows %q: %v", o.URL, sec, err)
				}
			}
		}
	}
}

// TestSend_ABasicHeadersPasswordStaysOutOfErrors: Basic credentials
// given as the Authorization header (the CLI's --broker-user and
// --broker-password-file) are kept out of an error as those in the URL
// are: a refusal that quotes the password it decoded does not show it.
func TestSend_ABasicHeadersPasswordStaysOutOfErrors(t *testing.T) {
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pw, _ := r.BasicAuth()
		http.Error(w, fmt.Sprintf("no access for user %s with password %s", user, pw), http.StatusUnauthorized)
	}))
	defer echo.Close()
	for _, pw := range []string{"pa55word", "pa:55word"} {
		for _, scheme := range []string{"Basic", "basic"} {
			s, err := New(Options{URL: echo.URL + "/default/broker", Budget: 5 * time.Second,
				Authorization: scheme + " " + base64.StdEncoding.EncodeToString([]byte("dovecot:"+pw))})
			if err != nil {
				t.Fatal(err)
			}
			err = s.Send(context.Background(), testEvent())
			if err == nil || !strings.Contains(err.Error(), "answered HTTP 401: no access for user dovecot with password") {
				t.Fatalf("%s %q: Send = %v; want the Broker's refusal", scheme, pw, err)
			}
			if strings.Contains(err.Error(), "55word") {
				t.Errorf("%s %q: the error shows the password: %v", scheme, pw, err)
			}
		}
	}
}

// TestSend_RetriedRefusalsKeepTheBrokersReason: with retries (ingest's
// default --send-retries is 3, sync's results sink and the CLI use 3
// too), the error of a refusal quotes what the Broker said, as it does
// without them: a final 400 saying which attribute it refused, or the
// last 503 of those retried. The token sent stays out of it.
func TestSend_RetriedRefusalsKeepTheBrokersReason(t *testing.T) {
	for _, code := range []int{http.StatusBadRequest, http.StatusServiceUnavailable} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "refused: attribute partitionkey missing for "+r.URL.String(), code)
		}))
		for _, retries := range []int{0, 3} {
			s, err := New(Options{URL: srv.URL + "/default/broker?access_token=TOK3N", Budget: 5 * time.Second, Retries: retries, Backoff: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			err = s.Send(context.Background(), testEvent())
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("answered HTTP %d: refused: attribute partitionkey missing", code)) || strings.Contains(err.Error(), "TOK3N") {
				t.Errorf("HTTP %d, %d retries: Send = %v; want the Broker's reason, without the token", code, retries, err)
			}
		}
		srv.Close()
	}
}
