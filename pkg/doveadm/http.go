package doveadm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// maxReply bounds a doveadm HTTP reply as read, its strings cut to
// maxStateKept (stringCap): a dsync state is about 60 bytes a mailbox
// (41 KB for 700), and one over maxStateKept is dropped as it is read.
const maxReply = 8 << 20

// HTTP runs dsync through a Dovecot host's doveadm HTTP API
// (POST /doveadm/v1, command "sync"). It works with Dovecot 2.3 and 2.4.
type HTTP struct {
	client  *http.Client
	timeout time.Duration

	mu sync.Mutex
	// tooLarge is, by doveadm URL, the smallest state refused as too
	// large; accepted the largest state it took.
	tooLarge map[string]int
	accepted map[string]int
}

// NewHTTP makes the transport; every call is bounded by timeout. client
// may be nil for Client(nil).
func NewHTTP(client *http.Client, timeout time.Duration) *HTTP {
	if client == nil {
		client = Client(nil, nil)
	}
	return &HTTP{client: client, timeout: timeout, tooLarge: map[string]int{}, accepted: map[string]int{}}
}

// Client is the HTTP client of the doveadm HTTP API. It checks an https
// URL's certificate against ca's CAs (doveadm-ca-file, read again at each
// request: caTransport), or the system's CAs when ca is nil, and follows
// no redirect: doveadm never answers one, and net/http sends the
// Authorization header, which carries the password or the API key, on
// to a redirect's target on the same host name (another port, or http://
// from https://). What happens to ca's file is logged to log.
func Client(ca *config.CAFile, log *slog.Logger) *http.Client {
	var rt http.RoundTripper = transport(nil)
	if ca != nil {
		rt = &caTransport{ca: ca, log: log}
	}
	return &http.Client{
		Transport:     rt,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func transport(roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second,
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}
}

// caTransport sends each request through a transport that trusts the CAs
// in ca's file as it is when the request starts. While the file's content
// stays the same, that is one transport and its connections; when it
// changes (a CA added before Dovecot's certificates are reissued by it),
// a new transport takes over, and the old one's idle connections are
// closed, so that each later request starts its TLS session checked
// against the new CAs. Requests under way end as they would.
type caTransport struct {
	ca  *config.CAFile
	log *slog.Logger

	mu   sync.Mutex
	pool *x509.CertPool // the CAs tr trusts
	tr   *http.Transport
}

func (t *caTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	// Read under the lock: a request that read the file before a change
	// must not put back the transport of the CAs before it.
	t.mu.Lock()
	if pool := t.ca.Pool(t.log); pool != t.pool {
		if t.tr != nil {
			t.tr.CloseIdleConnections()
		}
		t.pool, t.tr = pool, transport(pool)
	}
	tr := t.tr
	t.mu.Unlock()
	return tr.RoundTrip(r)
}

// CloseIdleConnections is http.Client's CloseIdleConnections.
func (t *caTransport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tr != nil {
		t.tr.CloseIdleConnections()
	}
}

// Sync runs one dsync of req.User from ep to req.Destination. A state
// Dovecot refuses as too large (2.4: HTTP 400 "JSON parse error: Excessive
// string size (> 32768)"; 2.3: 413 over 1 MiB) is left out, and the dsync
// runs at once as a full one without it (withoutState). The size refused
// is remembered for the endpoint, so that a state as large is left out at
// once, without being offered first; unless the endpoint took a state as
// large before: then the refusal was not for the state's size (a proxy in
// front of doveadm), and it holds for that attempt only. A state over
// maxStateKept, which no doveadm takes (one kept before replies were cut
// to it), is never sent: Dovecot resets such a request while it is sent,
// and when the kernel's buffers had taken all of it first, the reset
// looked like a doveadm that closed without an answer, a transport
// failure every attempt and every sweep met again.
func (h *HTTP) Sync(ctx context.Context, ep Endpoint, req SyncRequest) (SyncResult, error) {
	if req.State != "" && (len(req.State) > maxStateKept || h.refuses(ep, len(req.State))) {
		return withoutState(ctx, ep, req, h.sync)
	}
	res, err := h.sync(ctx, ep, req)
	var e *Error
	switch {
	case req.State == "":
	case errors.As(err, &e) && e.tooLarge:
		h.refused(ep, len(req.State))
		return withoutState(ctx, ep, req, h.sync)
	case err == nil || e != nil && e.Kind == KindExitCode:
		// doveadm read the request: it took the state.
		h.took(ep, len(req.State))
	}
	return res, err
}

// refuses says whether ep refused a state of at most n bytes before.
func (h *HTTP) refuses(ep Endpoint, n int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	least, ok := h.tooLarge[ep.URL]
	return ok && n >= least
}

// refused remembers that ep refused a state of n bytes, unless it took
// one at least as large before.
func (h *HTTP) refused(ep Endpoint, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n <= h.accepted[ep.URL] {
		return
	}
	if least, ok := h.tooLarge[ep.URL]; !ok || n < least {
		h.tooLarge[ep.URL] = n
	}
}

// took remembers that ep took a state of n bytes.
func (h *HTTP) took(ep Endpoint, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n > h.accepted[ep.URL] {
		h.accepted[ep.URL] = n
	}
}

func (h *HTTP) sync(ctx context.Context, ep Endpoint, req SyncRequest) (SyncResult, error) {
	opn := op(req.User, ep.Where())
	fail := func(kind Kind, err error, format string, args ...any) (SyncResult, error) {
		return SyncResult{}, &Error{Kind: kind, Op: opn, Detail: Redact(fmt.Sprintf(format, args...), ep.Secrets()...), Err: err}
	}
	params := map[string]any{
		"user":          req.User,
		"destination":   []string{req.Destination},
		"state":         req.State, // always sent: without it no new state comes back
		"allNamespaces": true,
	}
	if req.Full {
		params["fullSync"] = true
	}
	if req.LockTimeout > 0 {
		params["lockTimeout"] = wholeSeconds(req.LockTimeout)
	}
	if len(req.ExcludeMailboxes) > 0 {
		params["excludeMailbox"] = req.ExcludeMailboxes
	}
	// The request is cut off at h.timeout (post), but Dovecot goes on
	// with its dsync: one whose destination stalls ends itself no sooner.
	if d := stallTimeout(ctx, h.timeout); d > 0 {
		params["timeout"] = wholeSeconds(d)
	}
	tag := newTag()
	body, err := json.Marshal([]any{[]any{"sync", params, tag}})
	if err != nil {
		return fail(KindProtocol, err, "encode request: %v", err)
	}
	resp, cancel, pe := h.post(ctx, ep, body)
	defer cancel()
	if pe != nil {
		if pe.closedEarly() {
			// Measured with Dovecot 2.3.19: with the destination refusing
			// dsync's connection, doveadm's HTTP worker dies and closes
			// the connection without an answer. A bare "EOF" named
			// neither that nor the other causes seen (closedWithoutAnswer).
			return fail(pe.kind, pe.err, "%s: %s, or (Dovecot 2.3) the destination %s refused dsync's connection; the source's log says which", pe.detail, closedWithoutAnswer, req.Destination)
		}
		if pe.timedOut {
			// The dsync's stall timeout (stallTimeout) ends a stalled one
			// in Dovecot about now, and says so in the source's log.
			return fail(pe.kind, pe.err, "%s, or its destination %s stopped answering (the source's log then says \"I/O has stalled\"; one that accepted dsync's connection and never answered leaves no line)", pe.detail, req.Destination)
		}
		return fail(pe.kind, pe.err, "%s", pe.detail)
	}
	defer resp.Body.Close()
	sc := newStringCap(resp.Body, maxStateKept)
	data, err := io.ReadAll(io.LimitReader(sc, maxReply+1))
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fail(KindUnauthorized, nil, "HTTP %d: doveadm rejected the credentials", resp.StatusCode)
	case triedLater(resp.StatusCode):
		return fail(KindTransport, nil, "HTTP %d: %s", resp.StatusCode, snippet(data, ep.Secrets()))
	case resp.StatusCode != http.StatusOK:
		res, err := fail(KindProtocol, nil, "HTTP %d: %s", resp.StatusCode, snippet(data, ep.Secrets()))
		err.(*Error).tooLarge = resp.StatusCode == http.StatusRequestEntityTooLarge ||
			resp.StatusCode == http.StatusBadRequest && bytes.Contains(data, []byte("Excessive string size"))
		return res, err
	case err != nil:
		return fail(KindTransport, err, "reading the reply: %v", err)
	case len(data) > maxReply:
		return fail(KindProtocol, nil, "reply exceeds %d bytes", maxReply)
	case len(bytes.TrimSpace(data)) == 0:
		// No answer in a 200: retried as one that never came. (Dovecot
		// 2.3 with the destination down closes without an answer, EOF,
		// not this: TestIntegrationDovecot23_DoveadmHTTPTransport.)
		return fail(KindTransport, nil, "empty reply: doveadm answered 200 without a body")
	}
	res, err := parseReply(data, tag, opn, ep.Secrets(), fail)
	if err == nil && res.State == dropped {
		res.State, res.StateDropped = "", sc.longest
	}
	return res, err
}

// triedLater tells whether an HTTP status asks to be tried again later: a
// 5xx, or 408, 425 and 429, none of which doveadm answers: a proxy in
// front of it did.
func triedLater(code int) bool {
	return code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooEarly || code == http.StatusTooManyRequests
}

// closedWithoutAnswer explains a connection doveadm closed before any
// answer. Measured with Dovecot 2.3 and 2.4: a doveadm URL whose port is
// doveadm's TCP listener (dsync's, 12345 in the shipped snippets) rather
// than its http one answers every request so, and so does the master
// when every doveadm process is busy (service doveadm's process_limit
// reached): it takes some new connections and closes them at once, EOF
// or a reset, and logs "client connections are being dropped".
const closedWithoutAnswer = "doveadm closed the connection without an answer: every doveadm process may be busy (service doveadm's process_limit reached: Dovecot's log says \"client connections are being dropped\"), or the doveadm URL's port may be doveadm's TCP listener (dsync's) instead of its http one"

// waitedHint explains a request that got no answer in time. Measured with
// Dovecot 2.3 and 2.4: with every doveadm process busy, a new request
// waits in the listen queue until its timeout (a dsync cut off by its
// own timeout goes on in Dovecot, and keeps its process).
const waitedHint = "doveadm ran longer, or waited for a doveadm process (every one busy: service doveadm's process_limit reached, which Dovecot's log says as \"client connections are being dropped\")"

// parseReply reads [["doveadmResponse",[{"state":"..."}],"tag"]] or
// [["error",{"type":"exitCode","exitCode":75},"tag"]]. Its snippets of
// the reply are free of secrets; fail's Redact takes out the rest.
func parseReply(data []byte, tag, opn string, secrets []string, fail func(Kind, error, string, ...any) (SyncResult, error)) (SyncResult, error) {
	var reply [][]json.RawMessage
	if err := json.Unmarshal(data, &reply); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) && se.Offset >= int64(len(bytes.TrimSpace(data))) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fail(KindTransport, err, "truncated reply: %s", snippet(data, secrets))
		}
		return fail(KindProtocol, err, "unreadable reply: %s", snippet(data, secrets))
	}
	if len(reply) != 1 || len(reply[0]) < 2 {
		return fail(KindProtocol, nil, "unexpected reply shape: %s", snippet(data, secrets))
	}
	var kind, gotTag string
	_ = json.Unmarshal(reply[0][0], &kind)
	if len(reply[0]) > 2 {
		_ = json.Unmarshal(reply[0][2], &gotTag)
	}
	// Strings the server sent are shown as a snippet of its raw reply,
	// never as decoded: decoding can merge a byte of the password with the
	// bytes after it into another character, which Redact then misses.
	if gotTag != tag {
		return fail(KindProtocol, nil, "reply tag does not match request tag %q: %s", tag, snippet(data, secrets))
	}
	switch kind {
	case "doveadmResponse":
		var rows []map[string]any
		if err := json.Unmarshal(reply[0][1], &rows); err != nil {
			return fail(KindProtocol, err, "unreadable response: %s", snippet(data, secrets))
		}
		var res SyncResult
		for _, row := range rows {
			if s, ok := row["state"].(string); ok {
				res.State = s
			}
		}
		return res, nil
	case "error":
		var e struct {
			Type     string `json:"type"`
			ExitCode *int   `json:"exitCode"`
		}
		if err := json.Unmarshal(reply[0][1], &e); err != nil {
			return fail(KindProtocol, err, "unreadable error: %s", snippet(data, secrets))
		}
		switch {
		case e.Type == "exitCode" && e.ExitCode != nil:
			return SyncResult{}, &Error{Kind: KindExitCode, ExitCode: *e.ExitCode, Op: opn}
		case e.Type == "unAuthorized":
			return fail(KindUnauthorized, nil, "doveadm error %q", e.Type)
		case e.Type == "internalError":
			return fail(KindInternal, nil, "doveadm error %q", e.Type)
		}
		return fail(KindProtocol, nil, "unknown doveadm error: %s", snippet(data, secrets))
	}
	return fail(KindProtocol, nil, "unexpected reply: %s", snippet(data, secrets))
}

// snippet is the start of a reply for an error message, with secrets
// taken out before it is trimmed, cut and quoted: each could leave part of
// one, or change how it is spelt.
func snippet(b []byte, secrets []string) string {
	s := strings.TrimSpace(Redact(string(b), secrets...))
	if len(s) > 200 {
		return fmt.Sprintf("%q...", s[:200])
	}
	return fmt.Sprintf("%q", s)
}

func newTag() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "dw" + hex.EncodeToString(b[:])
}

// postError is a request that got no HTTP answer: its kind and a detail
// safe to show.
type postError struct {
	kind   Kind
	err    error
	detail string
	// timedOut: no answer came within the call's deadline.
	timedOut bool
}

// closedEarly says whether doveadm closed the connection before any
// answer (EOF, or a reset): see closedWithoutAnswer.
func (pe *postError) closedEarly() bool {
	return pe.kind == KindTransport && (errors.Is(pe.err, io.EOF) || errors.Is(pe.err, syscall.ECONNRESET))
}

// post sends body to ep's doveadm HTTP API within h.timeout. The returned
// cancel ends that timeout once the caller has read the answer.
func (h *HTTP) post(ctx context.Context, ep Endpoint, body []byte) (*http.Response, context.CancelFunc, *postError) {
	cancel := context.CancelFunc(func() {})
	if h.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
	}
	rd := bytes.NewReader(body)
	hr, err := newRequest(ctx, ep, rd)
	if err != nil {
		return nil, cancel, &postError{kind: KindProtocol, detail: "build request: invalid doveadm URL"}
	}
	resp, err := h.client.Do(hr)
	if err == nil {
		return resp, cancel, nil
	}
	if ctx.Err() != nil {
		detail := fmt.Sprintf("no answer within the timeout: %v", context.Cause(ctx))
		timedOut := errors.Is(context.Cause(ctx), context.DeadlineExceeded)
		if timedOut {
			detail += ": " + waitedHint
		}
		return nil, cancel, &postError{kind: KindTransport, err: err, detail: detail, timedOut: timedOut}
	}
	// Never print err itself: url.Error repeats the URL, which may carry
	// userinfo. The cause alone is enough.
	var ue interface{ Unwrap() error }
	cause := err
	if errors.As(err, &ue) && ue.Unwrap() != nil {
		cause = ue.Unwrap()
	}
	kind := KindTransport
	if tlsFailure(err) {
		kind = KindTLS
	}
	pe := &postError{kind: kind, err: err, detail: fmt.Sprint(cause)}
	if pe.closedEarly() && hr.URL.Scheme == "http" && speaksTLS(ctx, hr.URL) {
		// Measured with Dovecot 2.3 and 2.4: doveadm's TLS listener
		// closes a plain request at once (its log: "SSL_accept()
		// failed"). Retried, it fails for ever, and for every user.
		pe.kind, pe.detail = KindTLS, pe.detail+": the doveadm URL is http:// but its listener speaks TLS: use https://"
	}
	return nil, cancel, pe
}

// speaksTLS tells whether the listener of the http URL u completes a TLS
// handshake: a listener that closed a plain request at once may be a TLS
// one. Nothing is sent over the session, so its certificate is not
// checked here (an https URL then checks it).
func speaksTLS(ctx context.Context, u *url.URL) bool {
	port := u.Port()
	if port == "" {
		port = "80"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // a probe: nothing is sent
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// tlsFailure reports whether err is a TLS session that could not start
// for a reason a retry does not change: the server's certificate did not
// verify, the server answered the handshake with something that is not
// TLS (plain HTTP: net/http's ErrSchemeMismatch), or it refused the
// handshake with one of refusalAlerts. A reset or EOF during the
// handshake is none of these: it stays a transport failure, retried.
func tlsFailure(err error) bool {
	// crypto/tls wraps every failed check of the server's certificate (an
	// unknown CA, another name, expired) in CertificateVerificationError.
	var cv *tls.CertificateVerificationError
	var rh tls.RecordHeaderError
	if errors.As(err, &cv) || errors.As(err, &rh) || errors.Is(err, http.ErrSchemeMismatch) {
		return true
	}
	a, ok := remoteAlert(err)
	return ok && refusalAlerts[a]
}

// refusalAlerts are the TLS alerts (RFC 8446 section 6.2) with which a
// server refuses a handshake over its configuration or ours: no shared
// protocol version or cipher, a client certificate it requires, a name
// it does not serve. Others, such as internal_error or bad_record_mac,
// may come from a passing fault and are retried.
var refusalAlerts = map[uint8]bool{
	40:  true, // handshake_failure
	42:  true, // bad_certificate
	43:  true, // unsupported_certificate
	44:  true, // certificate_revoked
	45:  true, // certificate_expired
	46:  true, // certificate_unknown
	48:  true, // unknown_ca
	49:  true, // access_denied
	70:  true, // protocol_version
	71:  true, // insufficient_security
	112: true, // unrecognized_name
	116: true, // certificate_required
}

// remoteAlert returns the alert a TLS server sent, when err is one. Over
// TCP crypto/tls reports it as a *net.OpError "remote error" around its
// unexported alert type (a byte); tls.AlertError is used with QUIC only.
func remoteAlert(err error) (uint8, bool) {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(op.Err)
	if v.Kind() != reflect.Uint8 || v.Type().PkgPath() != "crypto/tls" {
		return 0, false
	}
	return uint8(v.Uint()), true
}

// newRequest builds a POST of body to ep's doveadm HTTP API, authenticated
// as doveadm expects: with an API key, the Authorization scheme
// X-Dovecot-API and the key in base64; else Basic auth as ep.User
// ("doveadm" by default) with doveadm_password. Dovecot 2.3 and 2.4 read
// the key from Authorization alone: a header of its own named
// X-Dovecot-API was answered 401 (TestIntegrationDovecot_APIKey).
func newRequest(ctx context.Context, ep Endpoint, body *bytes.Reader) (*http.Request, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, body)
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Accept", "application/json")
	if ep.APIKey != "" {
		hr.Header.Set("Authorization", "X-Dovecot-API "+base64.StdEncoding.EncodeToString([]byte(ep.APIKey)))
		return hr, nil
	}
	user := ep.User
	if user == "" {
		user = "doveadm"
	}
	hr.SetBasicAuth(user, ep.Password)
	return hr, nil
}
