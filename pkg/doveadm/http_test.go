package doveadm_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

func endpoint(s *doveadmtest.Server) doveadm.Endpoint {
	return doveadm.Endpoint{Name: s.Name, URL: s.APIURL(), User: "doveadm", Password: s.Password, Destination: "tcp:replica:12345"}
}

func TestHTTP_SyncSendsParametersAndReturnsState(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Respond = doveadmtest.Answers(doveadmtest.Reply{State: "AQAAAnew"})
	tr := doveadm.NewHTTP(nil, 5*time.Second)

	res, err := tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{
		User: "u1", Destination: "tcp:replica:12345", State: "AQAAAold", Full: true, LockTimeout: 30 * time.Second,
	})

	if err != nil || res.State != "AQAAAnew" {
		t.Fatalf("Sync = %+v, %v", res, err)
	}
	c := s.Tracker.Calls()[0]
	if c.User != "u1" || c.Destination != "tcp:replica:12345" || c.State != "AQAAAold" || !c.Full || c.LockTimeout != 30 || c.Timeout != 5 || !c.AllNS {
		t.Errorf("doveadm got %+v", c)
	}
}

// TestHTTP_StallTimeoutIsWhatIsLeftOfTheBound: dsync's timeout is the
// call's bound or what is left of the caller's deadline, whichever comes
// first, in whole seconds rounded up, at most Dovecot's own 600: a dsync
// whose destination stalls ends in Dovecot no sooner than dovewarden
// gives up on it, and no later.
func TestHTTP_StallTimeoutIsWhatIsLeftOfTheBound(t *testing.T) {
	for _, tc := range []struct {
		name     string
		bound    time.Duration
		deadline time.Duration // 0: none
		want     int
	}{
		{"the bound", 4 * time.Minute, 0, 240},
		{"a bound under a second", 300 * time.Millisecond, 0, 1},
		{"a bound in part seconds", 2500 * time.Millisecond, 0, 3},
		{"a nearer deadline", 4 * time.Minute, 90 * time.Second, 90},
		{"a farther deadline", 4 * time.Minute, 10 * time.Minute, 240},
		{"a bound over Dovecot's own", 20 * time.Minute, 0, 600},
		{"no bound, a deadline", 0, 42 * time.Second, 42},
		{"neither", 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := doveadmtest.NewServer(t, "mail-a", nil)
			s.Respond = doveadmtest.Answers(doveadmtest.Reply{State: "AQAAAnew"})
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			if _, err := doveadm.NewHTTP(nil, tc.bound).Sync(ctx, endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345"}); err != nil {
				t.Fatal(err)
			}
			if got := s.Tracker.Calls()[0].Timeout; got != tc.want {
				t.Errorf("timeout %d, want %d", got, tc.want)
			}
		})
	}
}

// TestHTTP_ATimeoutNamesAStalledDestination: a dsync with no answer in
// its time may be one whose destination stopped answering, which Dovecot
// ends at its stall timeout and logs: the error says so, and which
// destination. A listing's does not.
func TestHTTP_ATimeoutNamesAStalledDestination(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Respond = doveadmtest.Answers(doveadmtest.Reply{State: "AQAAAnew", Delay: 2 * time.Second})
	tr := doveadm.NewHTTP(nil, 200*time.Millisecond)
	_, err := tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345"})
	if err == nil || !strings.Contains(err.Error(), "destination tcp:replica:12345 stopped answering") || !strings.Contains(err.Error(), "I/O has stalled") {
		t.Errorf("a dsync without an answer in time: %v; want it to name a stalled destination", err)
	}
	if r := doveadm.Decide(err); r.Class != "transport" || !r.Retryable {
		t.Errorf("decided %+v, want a retried transport failure", r)
	}
	s.RespondList = func() doveadmtest.Reply { return doveadmtest.Reply{Delay: 2 * time.Second} }
	err = tr.ListUsers(context.Background(), endpoint(s), func(string) error { return nil })
	if err == nil || strings.Contains(err.Error(), "stalled") {
		t.Errorf("a listing without an answer in time: %v; want no word of a destination", err)
	}
}

// TestHTTP_APIKey: an API key goes as Dovecot takes it, the Authorization
// scheme X-Dovecot-API (the fake checks it so).
func TestHTTP_APIKey(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Password = "the-api-key"
	ep := endpoint(s)
	ep.Password, ep.APIKey = "", "the-api-key"
	if _, err := doveadm.NewHTTP(nil, time.Second).Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"}); err != nil {
		t.Fatal(err)
	}
}

// TestHTTP_NoRedirectIsFollowed: a redirect (from a proxy in front of
// doveadm, say) is a failure, and the credentials go nowhere else.
func TestHTTP_NoRedirectIsFollowed(t *testing.T) {
	var reached int
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached++
		t.Errorf("the redirect was followed: Authorization %q", r.Header.Get("Authorization"))
	}))
	t.Cleanup(other.Close)
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Another host name for the same listener: what net/http treats
		// as another host.
		http.Redirect(w, r, strings.Replace(other.URL, "127.0.0.1", "localhost", 1)+"/collect", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirect.Close)
	for _, ep := range []doveadm.Endpoint{
		{Name: "mail-a", URL: redirect.URL + "/doveadm/v1", APIKey: "the-api-key"},
		{Name: "mail-a", URL: redirect.URL + "/doveadm/v1", User: "doveadm", Password: "the-password"},
	} {
		_, err := doveadm.NewHTTP(nil, time.Second).Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
		if err == nil || !strings.Contains(err.Error(), "307") {
			t.Errorf("a redirect answered: %v, want a failure naming it", err)
		}
		err = doveadm.NewHTTP(nil, time.Second).ListUsers(context.Background(), ep, func(string) error { return nil })
		if err == nil {
			t.Error("a listing redirected succeeded")
		}
	}
	if reached != 0 {
		t.Errorf("the other host was reached %d times", reached)
	}
}

func TestHTTP_Failures(t *testing.T) {
	tests := []struct {
		name  string
		reply doveadmtest.Reply
		kind  doveadm.Kind
		code  int
		class string
	}{
		{"exit 75", doveadmtest.Reply{ExitCode: 75}, doveadm.KindExitCode, 75, "tempfail"},
		{"exit 2", doveadmtest.Reply{ExitCode: 2}, doveadm.KindExitCode, 2, "changed"},
		{"exit 65", doveadmtest.Reply{ExitCode: 65}, doveadm.KindExitCode, 65, "data_error"},
		{"exit 67", doveadmtest.Reply{ExitCode: 67}, doveadm.KindExitCode, 67, "no_user"},
		{"exit 68", doveadmtest.Reply{ExitCode: 68}, doveadm.KindExitCode, 68, "not_found"},
		{"exit 77", doveadmtest.Reply{ExitCode: 77}, doveadm.KindExitCode, 77, "no_permission"},
		{"exit 78", doveadmtest.Reply{ExitCode: 78}, doveadm.KindExitCode, 78, "config_error"},
		{"exit 99", doveadmtest.Reply{ExitCode: 99}, doveadm.KindExitCode, 99, "unknown"},
		{"empty reply", doveadmtest.Reply{Empty: true}, doveadm.KindTransport, 0, "transport"},
		{"HTTP 500", doveadmtest.Reply{Status: 500}, doveadm.KindTransport, 0, "transport"},
		{"HTTP 404", doveadmtest.Reply{Status: 404}, doveadm.KindProtocol, 0, "protocol"},
		// A proxy's "later, please" is retried, not a configuration problem.
		{"HTTP 408", doveadmtest.Reply{Status: 408}, doveadm.KindTransport, 0, "transport"},
		{"HTTP 425", doveadmtest.Reply{Status: 425}, doveadm.KindTransport, 0, "transport"},
		{"HTTP 429", doveadmtest.Reply{Status: 429}, doveadm.KindTransport, 0, "transport"},
		{"unknownMethod", doveadmtest.Reply{ErrorType: "unknownMethod"}, doveadm.KindProtocol, 0, "protocol"},
		{"internalError", doveadmtest.Reply{ErrorType: "internalError"}, doveadm.KindInternal, 0, "internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := doveadmtest.NewServer(t, "mail-a", nil)
			s.Respond = doveadmtest.Answers(tt.reply)
			_, err := doveadm.NewHTTP(nil, 5*time.Second).Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
			var de *doveadm.Error
			if !errors.As(err, &de) || de.Kind != tt.kind || de.ExitCode != tt.code {
				t.Fatalf("err = %#v, want kind %s code %d", err, tt.kind, tt.code)
			}
			if r := doveadm.Decide(err); r.Class != tt.class {
				t.Errorf("class %s, want %s", r.Class, tt.class)
			}
			if !strings.Contains(err.Error(), "sync u1 via doveadm at "+s.APIURL()) {
				t.Errorf("error lacks context: %v", err)
			}
		})
	}
}

func TestHTTP_WrongPasswordIs401AndNeverShown(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	ep := endpoint(s)
	ep.Password = "wrong-password-do-not-show"
	ep.URL = strings.Replace(ep.URL, "http://", "http://doveadm:url-password-do-not-show@", 1)

	_, err := doveadm.NewHTTP(nil, 5*time.Second).Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})

	if r := doveadm.Decide(err); r.Class != "unauthorized" || r.Action != doveadm.ReportConfig {
		t.Fatalf("err %v decided %+v, want unauthorized", err, r)
	}
	if strings.Contains(err.Error(), "do-not-show") {
		t.Errorf("error shows a password: %v", err)
	}
}

func TestHTTP_TimeoutIsRetryableTransportError(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Latency = 2 * time.Second
	start := time.Now()
	_, err := doveadm.NewHTTP(nil, 100*time.Millisecond).Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
	if r := doveadm.Decide(err); r.Class != "transport" || !r.Retryable {
		t.Fatalf("err %v decided %+v", err, r)
	}
	if time.Since(start) > 1500*time.Millisecond {
		t.Errorf("the call was not cut at its timeout")
	}
}

func TestHTTP_RefusedAndEOFAreTransportErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/doveadm/v1"
	ln.Close()
	// A server that hangs up mid-reply, like a dying doveadm worker.
	eof := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		w.Write([]byte(`[["doveadmResp`))
	}))
	defer eof.Close()
	hijack := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close()
	}))
	defer hijack.Close()
	for name, url := range map[string]string{"refused": refused, "eof mid-body": eof.URL, "closed": hijack.URL} {
		ep := doveadm.Endpoint{URL: url, Password: "pw-of-the-test"}
		_, err := doveadm.NewHTTP(nil, 2*time.Second).Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
		if r := doveadm.Decide(err); r.Class != "transport" || !r.Retryable {
			t.Errorf("%s: err %v decided %+v, want a retryable transport error", name, err, r)
		}
		// doveadm closes the connection without an answer when the URL's
		// port is its TCP (dsync) listener, and Dovecot 2.3.19's HTTP
		// worker when the destination refuses dsync's connection: the
		// message says so and names the destination, not "EOF" alone.
		for _, hint := range []string{"the doveadm URL's port may be doveadm's TCP listener (dsync's)", "the destination tcp:r:1 refused dsync's connection"} {
			if (name == "closed") != strings.Contains(fmt.Sprint(err), hint) {
				t.Errorf("%s: %v; want the hint %q only for a connection closed without an answer", name, err, hint)
			}
		}
	}
	// The listing of users alike.
	err = doveadm.NewHTTP(nil, 2*time.Second).ListUsers(context.Background(), doveadm.Endpoint{URL: hijack.URL, Password: "pw-of-the-test"}, func(string) error { return nil })
	if hint := "the doveadm URL's port may be doveadm's TCP listener (dsync's)"; err == nil || !strings.Contains(err.Error(), hint) {
		t.Errorf("listing: %v; want the hint %q", err, hint)
	}
}

func TestHTTP_GarbledOrMismatchedReplyIsProtocolError(t *testing.T) {
	for name, body := range map[string]string{
		"garbage":      `<html>hello</html>`,
		"wrong tag":    `[["doveadmResponse",[{"state":"x"}],"someone-else"]]`,
		"wrong shape":  `{"a":1}`,
		"unknown kind": `[["surprise",{},"t"]]`,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(body)) }))
		_, err := doveadm.NewHTTP(nil, 2*time.Second).Sync(context.Background(), doveadm.Endpoint{URL: srv.URL, Password: "p"}, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
		srv.Close()
		if r := doveadm.Decide(err); r.Class != "protocol" {
			t.Errorf("%s: err %v decided %+v, want protocol", name, err, r)
		}
	}
}

// An https doveadm URL: its certificate is checked against the CAs
// Client is given, and a TLS session that cannot start is a configuration
// problem (class tls, not retried), never a request with the credentials.
func TestHTTP_TLS(t *testing.T) {
	s := doveadmtest.NewTLSServer(t, "mail-a", nil)
	ownCA := caFile(t, filepath.Join(t.TempDir(), "ca.pem"), s.Certificate())
	sync := func(ca *config.CAFile, url string) error {
		ep := endpoint(s)
		ep.URL = url
		_, err := doveadm.NewHTTP(doveadm.Client(ca, slog.New(slog.DiscardHandler)), 5*time.Second).Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
		return err
	}
	if err := sync(ownCA, s.APIURL()); err != nil {
		t.Fatalf("with the server's CA: %v", err)
	}
	plain := doveadmtest.NewServer(t, "mail-a", nil)
	port := s.URL[strings.LastIndex(s.URL, ":")+1:]
	for _, tt := range []struct {
		name, url string
		ca        *config.CAFile
		want      string
	}{
		{"the system's CAs", s.APIURL(), nil, "certificate signed by unknown authority"},
		{"a name the certificate does not have", "https://localhost:" + port + "/doveadm/v1", ownCA, "not localhost"},
		{"a listener without TLS", strings.Replace(plain.APIURL(), "http://", "https://", 1), ownCA, "HTTP response to HTTPS client"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := sync(tt.ca, tt.url)
			var de *doveadm.Error
			if !errors.As(err, &de) || de.Kind != doveadm.KindTLS || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want kind tls with %q", err, tt.want)
			}
			if r := doveadm.Decide(err); r.Class != "tls" || r.Action != doveadm.ReportConfig || r.Retryable {
				t.Errorf("policy %+v, want class tls, reported as a configuration problem, not retried", r)
			}
		})
	}
	if n := len(s.Tracker.Calls()) + len(plain.Tracker.Calls()); n != 1 {
		t.Errorf("doveadm ran %d syncs, want 1: a failed TLS session sends no request", n)
	}
}

// caFile writes certs to path as PEM and loads it as doveadm-ca-file.
func caFile(t *testing.T, path string, certs ...*x509.Certificate) *config.CAFile {
	t.Helper()
	writeCerts(t, path, certs...)
	ca, err := config.LoadCAFile("doveadm-ca-file", path)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func writeCerts(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// doveadm-ca-file is read again at each request: a CA added to it (a
// rotation, before Dovecot's certificate is reissued by the new CA) is
// trusted from the next request on, by the same client, with no restart.
// A file that does not load then is logged once, and the CAs loaded
// before are still used.
func TestHTTP_CAFileReadAgain(t *testing.T) {
	s := doveadmtest.NewTLSServer(t, "mail-a", nil)
	dir := t.TempDir()
	other, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	otherCA := other.Certificate()
	path := filepath.Join(dir, "doveadm-ca.pem")
	ca := caFile(t, path, otherCA)
	var logged safebuf.Buffer
	c := doveadm.Client(ca, slog.New(slog.NewTextHandler(&logged, nil)))
	h := doveadm.NewHTTP(c, 5*time.Second)
	sync := func() error {
		_, err := h.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
		return err
	}

	if err := sync(); err == nil || doveadm.Decide(err).Class != "tls" || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("with a CA that did not sign the certificate: %v, want class tls, unknown authority", err)
	}
	// The rotation adds the CA that signs doveadm's certificate.
	writeCerts(t, path, otherCA, s.Certificate())
	if err := sync(); err != nil {
		t.Fatalf("after the CA was added to doveadm-ca-file: %v", err)
	}
	if !strings.Contains(logged.String(), "doveadm-ca-file loaded again") || !strings.Contains(logged.String(), "certificates=2") {
		t.Errorf("log %q, want doveadm-ca-file loaded again with 2 certificates", logged.String())
	}

	// Half written, then gone: the CAs loaded before still verify, on a
	// new connection too, and each failure is logged once.
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, whole[:len(whole)-100], 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		c.CloseIdleConnections()
		if err := sync(); err != nil {
			t.Fatalf("sync %d with a half-written doveadm-ca-file: %v", i, err)
		}
	}
	if n := strings.Count(logged.String(), "cut short"); n != 1 {
		t.Errorf("a half-written file logged %d times, want once:\n%s", n, logged.String())
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := sync(); err != nil {
		t.Fatalf("sync with doveadm-ca-file gone: %v", err)
	}
	if !strings.Contains(logged.String(), "did not load") || !strings.Contains(logged.String(), "no such file") {
		t.Errorf("log %q, want doveadm-ca-file did not load: no such file", logged.String())
	}

	// The CA that signs doveadm's certificate taken out again: trusted
	// no longer, from the next request on.
	writeCerts(t, path, otherCA)
	if err := sync(); err == nil || doveadm.Decide(err).Class != "tls" {
		t.Fatalf("after the CA was taken out of doveadm-ca-file: %v, want class tls", err)
	}
	if n := len(s.Tracker.Calls()); n != 4 {
		t.Errorf("doveadm ran %d syncs, want 4: one for each that verified", n)
	}
}

// A TLS handshake cut off by the network (EOF, reset) is a transport
// failure, retried; one the server refuses with an alert about its
// configuration or ours is class tls, and one with an alert that a
// passing fault can cause is retried.
func TestHTTP_TLSHandshakeCutOrRefused(t *testing.T) {
	raw := func(serve func(c *net.TCPConn)) string {
		return "https://" + rawListener(t, serve) + "/doveadm/v1"
	}
	// readHello reads the client's first record, its ClientHello.
	readHello := func(c net.Conn) {
		h := make([]byte, 5)
		if _, err := io.ReadFull(c, h); err == nil {
			io.ReadFull(c, make([]byte, int(h[3])<<8|int(h[4])))
		}
	}
	reset := func(c *net.TCPConn) { c.SetLinger(0); c.Close() }
	alert := func(code byte) func(c *net.TCPConn) {
		return func(c *net.TCPConn) {
			readHello(c)
			c.Write([]byte{21, 3, 3, 0, 2, 2, code}) // a fatal alert record
			c.Close()
		}
	}
	tlsServer := func(cfg *tls.Config) string {
		s := httptest.NewUnstartedServer(http.NotFoundHandler())
		s.TLS = cfg
		s.Config.ErrorLog = log.New(io.Discard, "", 0)
		s.StartTLS()
		t.Cleanup(s.Close)
		return s.URL + "/doveadm/v1"
	}
	for _, tt := range []struct {
		name, url, class string
	}{
		{"EOF before the ServerHello", raw(func(c *net.TCPConn) { readHello(c); c.Close() }), "transport"},
		{"reset before the ServerHello", raw(func(c *net.TCPConn) { readHello(c); reset(c) }), "transport"},
		{"EOF inside a record", raw(func(c *net.TCPConn) { readHello(c); c.Write([]byte{22, 3, 3, 0, 64, 2}); c.Close() }), "transport"},
		{"reset at once", raw(reset), "transport"},
		{"alert handshake_failure", raw(alert(40)), "tls"},
		{"alert protocol_version", raw(alert(70)), "tls"},
		{"alert internal_error", raw(alert(80)), "transport"},
		{"alert bad_record_mac", raw(alert(20)), "transport"},
		{"a server with TLS 1.1 at most", tlsServer(&tls.Config{MaxVersion: tls.VersionTLS11}), "tls"},
		{"a server that requires a client certificate", tlsServer(&tls.Config{ClientAuth: tls.RequireAnyClientCert}), "tls"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ep := doveadm.Endpoint{Name: "mail-a", URL: tt.url, User: "doveadm", Password: "pw", Destination: "tcp:r:1"}
			// InsecureSkipVerify: httptest's certificate is beside the point.
			c := doveadm.Client(nil, nil)
			c.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify = true
			_, err := doveadm.NewHTTP(c, 5*time.Second).Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
			if r := doveadm.Decide(err); err == nil || r.Class != tt.class {
				t.Errorf("err = %v, class %s; want class %s", err, r.Class, tt.class)
			}
		})
	}
}

// TestHTTP_StateTooLargeRunsAFullSyncWithoutIt: Dovecot 2.4 answers a
// state over 32 KiB with 400 "JSON parse error: Excessive string size (>
// 32768)", 2.3 one over 1 MiB with 413: the dsync runs at once as a full
// one without the state, and says so. Another 400 is not retried.
func TestHTTP_StateTooLargeRunsAFullSyncWithoutIt(t *testing.T) {
	big := strings.Repeat("A", 40_000)
	for _, tc := range []struct {
		name  string
		reply doveadmtest.Reply
		retry bool
	}{
		{"2.4", doveadmtest.Reply{Status: 400, Body: "JSON parse error: Excessive string size (> 32768)"}, true},
		{"2.3", doveadmtest.Reply{Status: 413, Body: "Payload Too Large"}, true},
		{"another 400", doveadmtest.Reply{Status: 400, Body: "Invalid request"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := doveadmtest.NewServer(t, "mail-a", nil)
			s.Respond = func(c doveadmtest.Call) doveadmtest.Reply {
				if len(c.State) > 32768 {
					return tc.reply
				}
				return doveadmtest.Reply{State: "AQAAAnew"}
			}
			tr := doveadm.NewHTTP(nil, 5*time.Second)
			res, err := tr.Sync(context.Background(), endpoint(s),
				doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345", State: big, LockTimeout: 30 * time.Second})
			calls := s.Tracker.Calls()
			if !tc.retry {
				if err == nil || doveadm.Decide(err).Class != "protocol" || len(calls) != 1 || res.StateLeftOut != 0 {
					t.Fatalf("Sync = %+v, %v after %d calls: want one call, a protocol error", res, err, len(calls))
				}
				return
			}
			if err != nil || res.State != "AQAAAnew" || res.StateLeftOut != len(big) {
				t.Fatalf("Sync = %+v, %v: want the new state, %d bytes of state left out", res, err, len(big))
			}
			if len(calls) != 2 || calls[0].State != big || calls[0].Full || calls[1].State != "" || !calls[1].Full || calls[1].LockTimeout != 30 {
				t.Errorf("calls %+v: want the state refused, then a full sync without it", calls)
			}
			// The refusal is remembered: a state as large is left out at
			// once, a smaller one still offered.
			res, err = tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345", State: big + "B"})
			calls = s.Tracker.Calls()
			if err != nil || res.StateLeftOut != len(big)+1 || len(calls) != 3 || calls[2].State != "" || !calls[2].Full {
				t.Errorf("a state as large again: %+v, %v, calls %+v: want it left out without being offered", res, err, calls[2:])
			}
			small := big[:1000]
			res, err = tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345", State: small})
			calls = s.Tracker.Calls()
			if err != nil || res.StateLeftOut != 0 || len(calls) != 4 || calls[3].State != small {
				t.Errorf("a smaller state: %+v, %v, calls %+v: want it offered", res, err, calls[3:])
			}
		})
	}
	// A small state is never left out.
	s := doveadmtest.NewServer(t, "mail-a", nil)
	res, err := doveadm.NewHTTP(nil, 5*time.Second).Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345", State: "AQAAAold"})
	if err != nil || res.StateLeftOut != 0 || len(s.Tracker.Calls()) != 1 {
		t.Errorf("small state: %+v, %v", res, err)
	}
}

// TestHTTP_StateTooLargeNotRememberedBelowOneTaken: a refusal of a state
// no larger than one the doveadm URL took before is not for its size (a
// proxy's 413 for another reason): it leaves that attempt's state out,
// but later states are still offered, not every one left out.
func TestHTTP_StateTooLargeNotRememberedBelowOneTaken(t *testing.T) {
	big, small := strings.Repeat("A", 40_000), strings.Repeat("A", 1000)
	var refuse atomic.Bool
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Respond = func(c doveadmtest.Call) doveadmtest.Reply {
		if c.State != "" && refuse.CompareAndSwap(true, false) {
			return doveadmtest.Reply{Status: 413, Body: "Payload Too Large"}
		}
		return doveadmtest.Reply{State: "AQAAAnew"}
	}
	tr := doveadm.NewHTTP(nil, 5*time.Second)
	sync := func(state string) (doveadm.SyncResult, error) {
		return tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345", State: state})
	}
	if res, err := sync(big); err != nil || res.StateLeftOut != 0 {
		t.Fatalf("a state the server takes: %+v, %v", res, err)
	}
	refuse.Store(true)
	if res, err := sync(small); err != nil || res.StateLeftOut != len(small) {
		t.Fatalf("a state refused: %+v, %v; want it left out", res, err)
	}
	res, err := sync(small + "B")
	calls := s.Tracker.Calls()
	if err != nil || res.StateLeftOut != 0 || calls[len(calls)-1].State != small+"B" {
		t.Errorf("a state after a refusal below one taken: %+v, %v, last call %+v: want it offered", res, err, calls[len(calls)-1])
	}
}

// TestHTTP_AStateNoDoveadmTakesIsNeverSent: a state over 1 MiB (kept
// before replies were cut to that size) is refused by every doveadm, and
// Dovecot 2.3 and 2.4 reset a request of some 4 MiB or more while it is
// still being sent, before their 413 or 400 (measured). When the kernel
// had taken the whole request first, the reset was a doveadm that closed
// without an answer: a transport failure at every attempt and sweep. Such
// a state is now left out at once; one of 1 MiB is still offered.
func TestHTTP_AStateNoDoveadmTakesIsNeverSent(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{State: "AQAAAnew"} }
	tr := doveadm.NewHTTP(nil, 5*time.Second)
	for i, n := range []int{5 << 20, 1<<20 + 1} {
		huge := strings.Repeat("A", n)
		res, err := tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345", State: huge, LockTimeout: 30 * time.Second})
		calls := s.Tracker.Calls()
		if err != nil || res.State != "AQAAAnew" || res.StateLeftOut != n {
			t.Fatalf("a state of %d bytes: %+v, %v: want the new state, all of it left out", n, res, err)
		}
		if len(calls) != i+1 || calls[i].State != "" || !calls[i].Full || calls[i].LockTimeout != 30 {
			t.Fatalf("a state of %d bytes: calls %+v: want one full sync without it", n, calls)
		}
	}
	kept := strings.Repeat("A", 1<<20)
	res, err := tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345", State: kept})
	if calls := s.Tracker.Calls(); err != nil || res.StateLeftOut != 0 || calls[len(calls)-1].State != kept {
		t.Errorf("a state of 1 MiB: %+v, %v: want it offered", res, err)
	}
}

// TestHTTP_AStateTooLargeToKeepIsDropped: a reply whose state is larger
// than any doveadm takes back (a user of some 150,000 mailboxes answers 9
// MiB) is a success without it, so that the next dsync is a full one.
// Before, a reply over 8 MiB was a protocol error although the dsync ran,
// and the user ended failed.
func TestHTTP_AStateTooLargeToKeepIsDropped(t *testing.T) {
	huge := strings.Repeat("A", 9<<20)
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{State: huge} }
	tr := doveadm.NewHTTP(nil, 5*time.Second)
	res, err := tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345"})
	if err != nil || res.State != "" || res.StateDropped != len(huge) {
		t.Fatalf("a reply with a state of %d bytes: kept %d, dropped %d, %v; want a success, the state dropped", len(huge), len(res.State), res.StateDropped, err)
	}
	s.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{State: "AQAAAnew"} }
	if res, err := tr.Sync(context.Background(), endpoint(s), doveadm.SyncRequest{User: "u1", Destination: "tcp:replica:12345"}); err != nil || res.State != "AQAAAnew" || res.StateDropped != 0 {
		t.Errorf("a reply with a small state: %+v, %v", res, err)
	}
}

// TestHTTP_EchoedCredentialsNeverShown: a host that answers the request
// back (a debugging proxy, a wrong service behind the URL) puts the
// credentials in its answer as they were sent, base64 in the
// Authorization header; errors quote the answer, and
// show them as no more than the password itself.
func TestHTTP_EchoedCredentialsNeverShown(t *testing.T) {
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "Authorization: %s\n", r.Header.Get("Authorization"))
	}))
	defer echo.Close()
	for name, ep := range map[string]doveadm.Endpoint{
		"password": {URL: echo.URL, User: "doveadm", Password: "pw-do-not-show"},
		"api key":  {URL: echo.URL, APIKey: "key-do-not-show"},
	} {
		tr := doveadm.NewHTTP(nil, 2*time.Second)
		_, err := tr.Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
		lerr := tr.ListUsers(context.Background(), ep, func(string) error { return nil })
		for _, e := range []error{err, lerr} {
			if e == nil || !strings.Contains(e.Error(), "HTTP 400") {
				t.Fatalf("%s: err %v, want the HTTP 400", name, e)
			}
			secret := ep.Password + ep.APIKey
			for _, form := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), base64.StdEncoding.EncodeToString([]byte(ep.User + ":" + secret))} {
				if strings.Contains(e.Error(), form) {
					t.Errorf("%s: the error shows %q: %v", name, form, e)
				}
			}
		}
	}
}

// TestHTTP_PlainURLToATLSListener: a doveadm TLS listener closes a plain
// request without an answer (Dovecot 2.3 and 2.4: "SSL_accept() failed"),
// which alone reads as a busy doveadm; a TLS handshake to the same
// address tells it apart: class tls, not retried. A plain listener that
// closes so stays a transport failure, retried.
func TestHTTP_PlainURLToATLSListener(t *testing.T) {
	tlsCfg := func() *tls.Config {
		s := httptest.NewUnstartedServer(http.NotFoundHandler())
		s.StartTLS()
		defer s.Close()
		return s.TLS.Clone()
	}()
	listener := func(speaksTLS bool) string {
		return "http://" + rawListener(t, func(c *net.TCPConn) {
			defer c.Close()
			first := make([]byte, 1)
			if _, err := c.Read(first); err != nil || first[0] != 22 || !speaksTLS {
				return // not a handshake record: closed at once
			}
			tc := tls.Server(&prefixConn{Conn: c, first: first}, tlsCfg)
			_ = tc.Handshake()
			tc.Close()
		}) + "/doveadm/v1"
	}
	for _, tt := range []struct {
		name  string
		tls   bool
		class string
	}{{"TLS listener", true, "tls"}, {"plain listener closing", false, "transport"}} {
		ep := doveadm.Endpoint{Name: "mail-a", URL: listener(tt.tls), User: "doveadm", Password: "pw", Destination: "tcp:r:1"}
		_, err := doveadm.NewHTTP(nil, 5*time.Second).Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: "tcp:r:1"})
		if r := doveadm.Decide(err); r.Class != tt.class {
			t.Errorf("%s: err %v decided %s, want %s", tt.name, err, r.Class, tt.class)
		}
	}
}

// rawListener listens on loopback until the test ends and hands each
// connection to serve, in a goroutine of its own; it returns the address.
func rawListener(t *testing.T, serve func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c.(*net.TCPConn))
		}
	}()
	return ln.Addr().String()
}

// prefixConn is a connection whose first bytes were read already.
type prefixConn struct {
	net.Conn
	first []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(p, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
