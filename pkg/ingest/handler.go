// Package ingest is the ingest function: it receives the JSON events
// Dovecot's event exporter posts, keeps those that changed mail, and hands
// each as a CloudEvent to the Broker before answering Dovecot.
package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	gojson "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

// Sender hands a CloudEvent to the Broker; nil means the Broker accepted it.
type Sender interface {
	Send(ctx context.Context, ev cloudevents.Event) error
}

// PendingMarker records a user whose change could not be sent, so the sweep
// replicates the user later.
type PendingMarker interface {
	MarkPending(ctx context.Context, user, host string, at time.Time) error
}

// Clock is the sync function's clock (Redis TIME): changes stamped with it
// are coalesced exactly, without a clock-skew margin.
type Clock interface {
	Now(ctx context.Context) (time.Time, error)
}

// Options configure the handler.
type Options struct {
	// MaxBody is the largest body accepted (413 beyond).
	MaxBody int64
	// BasicUser and BasicPassword, when set, require HTTP Basic auth.
	BasicUser, BasicPassword string
	// Token, when set, requires "Authorization: Bearer Token".
	Token string
	// Username normalises usernames (Dovecot's auth_username_format).
	Username dovecot.UsernameFormat
	// Clock, when set, stamps each change with when ingest saw it.
	Clock Clock
}

// Handler serves Dovecot's exporter POSTs.
type Handler struct {
	opts    Options
	send    Sender
	pending PendingMarker
	log     *slog.Logger
	m       *ingestMetrics
	bufs    sync.Pool
	// Hashes of the credentials, so comparisons take the same time whatever
	// the length of what the client sent.
	userSum, passSum, tokenSum [32]byte
	// rejectLogs bounds the lines of refusals, a line a minute per
	// reason; sendFailLogs those of changes not handed to the Broker;
	// noUserLogs those of changes that name no user, a line a minute
	// per host label.
	rejectLogs, sendFailLogs, noUserLogs *lograte.Limiter
	// names finds a user named with and without a domain.
	names twoNames
	// clockAgain is when, in UnixNano of now, the clock is asked again
	// after it failed.
	clockAgain atomic.Int64
	now        func() time.Time
}

// NewHandler builds the ingest handler. pending may be nil (no Redis).
func NewHandler(o Options, send Sender, pending PendingMarker, reg prometheus.Registerer, log *slog.Logger) *Handler {
	h := &Handler{opts: o, send: send, pending: pending, log: log, m: newIngestMetrics(reg),
		rejectLogs: lograte.PerMinute(1).Saying("per reason"), sendFailLogs: lograte.PerMinute(sendFailLogBurst).Saying("per host and recovery"),
		noUserLogs: lograte.PerMinute(1).Saying("per host"), now: time.Now}
	h.bufs.New = func() any { return new(bytes.Buffer) }
	h.userSum = sha256.Sum256([]byte(o.BasicUser))
	h.passSum = sha256.Sum256([]byte(o.BasicPassword))
	h.tokenSum = sha256.Sum256([]byte(o.Token))
	return h
}

// Hosts lists the Dovecot hosts events came from since the start, with
// how many and when the last came, by name.
func (h *Handler) Hosts() []HostSeen { return h.m.hostsSeen() }

// Mount registers the handler at / and /events.
func (h *Handler) Mount(mux *http.ServeMux) {
	mux.Handle("/", h)
	mux.Handle("/events", h)
}

// reply is the JSON body of every answer, for admins reading with curl.
type reply struct {
	Status string `json:"status"`
	ID     string `json:"id,omitempty"`
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

// writeReply answers with code and r, and returns code.
func writeReply(w http.ResponseWriter, code int, r reply) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	// goccy/go-json writes what json.Encoder writes, in less time.
	b, err := gojson.Marshal(r)
	if err != nil {
		_ = json.NewEncoder(w).Encode(r)
		return code
	}
	_, _ = w.Write(append(b, '\n'))
	return code
}

func (h *Handler) reject(w http.ResponseWriter, r *http.Request, code int, reason, msg string) int {
	h.m.rejected.WithLabelValues(reason).Inc()
	h.logRejected(r, code, reason, msg)
	return writeReply(w, code, reply{Status: "rejected", Reason: reason, Error: msg})
}

// logRejected logs a refusal, at most once a minute per reason, with how
// many were not logged since. Dovecot's exporter logs its side
// (`Failed to export event via HTTP POST: 404 Not Found`) and drops the
// event; without this ingest's log said nothing, and a wrong exporter
// path, which DovewardenIngestRejectingRequests leaves out with the
// scanners', was seen nowhere in dovewarden. Wrong methods are not logged
// (Dovecot only POSTs), nor wrong paths but with POST.
func (h *Handler) logRejected(r *http.Request, code int, reason, msg string) {
	if reason == rejectMethod || reason == rejectPath && r.Method != http.MethodPost {
		return
	}
	attrs := []any{"reason", reason, "code", code, "path", r.URL.Path, "remote", r.RemoteAddr, "err", msg}
	switch {
	case reason == rejectPath:
		attrs = append(attrs, "fix", "Dovecot's exporter URL (http_post_url in 2.4, transport_args in 2.3) must end in /events")
	case reason == rejectAuth && (r.URL.Path == "/" || r.URL.Path == "/events"):
		attrs = append(attrs, "fix", "Dovecot's exporter URL must carry ingest's credentials (--auth-user and --auth-password): http://USER:PASSWORD@HOST/events")
	}
	h.rejectLogs.Log(r.Context(), h.log, slog.LevelWarn, reason, "request refused", attrs...)
}

// unauthorized answers a request without the right credentials.
func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request) int {
	if h.opts.Token != "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="dovewarden"`)
	} else {
		w.Header().Set("WWW-Authenticate", `Basic realm="dovewarden"`)
	}
	return h.reject(w, r, http.StatusUnauthorized, rejectAuth, "missing or wrong credentials")
}

// Protect makes next ask for ingest's credentials, when it has any (local
// mode puts its broker ingress and status behind them). A refusal is
// ingest's 401, counted as an unauthorized rejection.
func (h *Handler) Protect(next http.Handler) http.Handler {
	if h.opts.Token == "" && h.opts.BasicUser == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.authorized(r) {
			h.unauthorized(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// isJSONMediaType reports whether ct is application/json with parameters or
// in another spelling; ServeHTTP takes the usual bare "application/json"
// without parsing it.
func isJSONMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

// contentCoding checks the Content-Encoding header lines of a request:
// none, empty or "identity" is the body as it is, which ok reports; any
// other coding is returned.
func contentCoding(lines []string) (coding string, ok bool) {
	for _, line := range lines {
		for c := range strings.SplitSeq(line, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return c, false
			}
		}
	}
	return "", true
}

// ServeHTTP handles one exporter POST, timed by its answer's code.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	code := h.serve(w, r)
	h.m.answered(code).Observe(time.Since(start).Seconds())
}

// serve handles one exporter POST and returns the code it answered.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	if r.URL.Path != "/" && r.URL.Path != "/events" {
		return h.reject(w, r, http.StatusNotFound, rejectPath, "post Dovecot events to / or /events")
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return h.reject(w, r, http.StatusMethodNotAllowed, rejectMethod, "method "+r.Method+" not allowed: POST Dovecot events")
	}
	if !h.authorized(r) {
		return h.unauthorized(w, r)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && !isJSONMediaType(ct) {
		return h.reject(w, r, http.StatusUnsupportedMediaType, rejectContentType,
			fmt.Sprintf("content type %q: want application/json", r.Header.Get("Content-Type")))
	}
	if coding, ok := contentCoding(r.Header.Values("Content-Encoding")); !ok {
		// RFC 9110 15.5.16: 415 for a content coding the server does
		// not take, with Accept-Encoding naming those it does. Read as
		// JSON, a gzip body was a 400 "invalid JSON".
		w.Header().Set("Accept-Encoding", "identity")
		return h.reject(w, r, http.StatusUnsupportedMediaType, rejectContentEncoding,
			fmt.Sprintf("content coding %q: ingest takes the body as it is, with no Content-Encoding (Dovecot's exporter sends none)", coding))
	}
	if r.ContentLength > h.opts.MaxBody {
		// Refused before any of it is read (a client that sent
		// "Expect: 100-continue" is not asked for it), and the
		// connection with it, rather than reading the rest to go on.
		w.Header().Set("Connection", "close")
		return h.reject(w, r, http.StatusRequestEntityTooLarge, rejectTooLarge, fmt.Sprintf("body of %d bytes exceeds %d", r.ContentLength, h.opts.MaxBody))
	}
	buf := h.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer h.bufs.Put(buf)
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, h.opts.MaxBody)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return h.reject(w, r, http.StatusRequestEntityTooLarge, rejectTooLarge, fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
		}
		return h.reject(w, r, http.StatusBadRequest, rejectRead, "reading body: "+err.Error())
	}
	ev, err := dovecot.Parse(buf.Bytes())
	if err != nil {
		return h.reject(w, r, http.StatusBadRequest, rejectMalformed, err.Error())
	}
	return h.handleEvent(w, r, &ev)
}

func (h *Handler) handleEvent(w http.ResponseWriter, r *http.Request, ev *dovecot.Event) int {
	host := ev.Hostname
	if r.URL.RawQuery != "" { // the exporter URL usually has no query
		if q := r.URL.Query().Get("host"); q != "" {
			host = q
		}
	}
	if err := CheckHost(host); err != nil {
		return h.reject(w, r, http.StatusBadRequest, rejectHost, err.Error())
	}
	hm := h.m.host(host)
	hostLabel := hm.label
	if hm.seen(time.Now()) && hostLabel != otherHost {
		// Tells that the exporter reaches ingest, and the name a host
		// map's key must be for this host.
		h.log.Info("first event from this Dovecot host since the start", "host", host, "event", ev.Name)
	}

	c, reason, err := Translator{Username: h.opts.Username}.Change(ev, host)
	if err != nil {
		return h.reject(w, r, http.StatusBadRequest, rejectUser, err.Error())
	}
	if reason != "" {
		h.m.dropped.WithLabelValues(hostLabel, string(reason)).Inc()
		if reason == dovecot.DropNoUser {
			// Only a change gets here, and changes come after login
			// (Dovecot's login processes send no command events): every
			// change of this host is lost until this is fixed.
			h.noUserLogs.Log(r.Context(), h.log, slog.LevelWarn, hostLabel,
				"a change names no user and is dropped: Dovecot's event exporter must send the user field (the fields setting of config/dovecot/events-*.conf), and --username-format must leave a name",
				"host", host, "event", ev.Name, "command", strings.ToUpper(ev.Fields.CmdName), "username_format", h.opts.Username.String())
		}
		return writeReply(w, http.StatusOK, reply{Status: "dropped", Reason: string(reason)})
	}
	if other, ok := h.names.observe(c.User); ok {
		h.log.Warn("changes name one user two ways, with and without a domain: if they are one mailbox, set --username-format to Dovecot's auth_username_format (%Ln where Dovecot strips the domain); until then each name has a lock and record of its own",
			"user", c.User, "also", other, "username_format", h.opts.Username.String(), "event", ev.Name)
	}
	h.observe(r.Context(), &c)
	if c.Time.IsZero() {
		// The event has no start_time or end_time: the change happened
		// at the latest when ingest received it. A zero time would be
		// a year-1 pending mark that no later mark replaces.
		c.Time = c.Observed
		if c.Time.IsZero() {
			c.Time = time.Now().UTC()
		}
	}
	ce, err := contract.FromChange(c)
	if err != nil {
		return h.reject(w, r, http.StatusBadRequest, rejectInvalid, err.Error())
	}
	start := time.Now()
	// Not cut short when Dovecot gives up waiting (its exporter timeout):
	// the event it dropped still reaches the Broker, within the budget.
	err = h.send.Send(context.WithoutCancel(r.Context()), ce)
	h.m.sendTime.Observe(time.Since(start).Seconds())
	if err != nil {
		return h.sendFailed(r.Context(), w, hostLabel, c, err)
	}
	h.m.accepted.WithLabelValues(hostLabel, string(c.Priority)).Inc()
	return writeReply(w, http.StatusAccepted, reply{Status: "accepted", ID: c.ID})
}

// clockWait bounds the wait for the clock; after a failure it is not
// asked for clockPause. While Redis is down every ask waits the whole
// bound (the Redis client dials again and again), which held each change
// 50 ms: some 20 changes a second on each of Dovecot's connections, the
// rest dropped at Dovecot's exporter timeout, though the Broker took
// changes as fast as ever.
const (
	clockWait  = 50 * time.Millisecond
	clockPause = time.Second
)

// observe stamps c with the sync function's clock. Without the stamp the
// change still replicates, coalesced by its Dovecot time and the
// clock-skew margin, so a failure is counted, not fatal.
func (h *Handler) observe(ctx context.Context, c *change.Change) {
	if h.opts.Clock == nil {
		return
	}
	// Paused only within clockPause before clockAgain: a wall clock
	// stepped back after the failure would otherwise stretch the pause
	// by the step.
	if n, again := h.now().UnixNano(), h.clockAgain.Load(); n < again && n >= again-int64(clockPause) {
		h.m.observeFails.Inc()
		return
	}
	cctx, cancel := context.WithTimeout(ctx, clockWait)
	defer cancel()
	now, err := h.opts.Clock.Now(cctx)
	if err != nil {
		if ctx.Err() == nil { // not the client that left
			h.clockAgain.Store(h.now().Add(clockPause).UnixNano())
		}
		h.m.observeFails.Inc()
		return
	}
	c.Observed = now
}

// sendFailLogBurst is how many changes not handed to the Broker are
// logged a minute, per host and outcome of the pending mark: while the
// Broker refuses, every event is one (a full lane refuses at the rate
// Dovecot sends), and the counters and the pending marks keep them all.
const sendFailLogBurst = 5

// lostFix is what to do about changes neither handed to the Broker nor
// marked pending: nothing else asks for their users' dsyncs before the
// next change or the periodic full sync.
const lostFix = "once the Broker and Redis answer, run `dovewarden sweep --all`: it replicates every user not replicated since"

// sendFailed makes sure the change is not lost silently: a counter, a
// pending mark for the sweep when Redis is configured, an error log that
// names user and host (a few a minute), and a 503 to Dovecot.
func (h *Handler) sendFailed(ctx context.Context, w http.ResponseWriter, hostLabel string, c change.Change, err error) int {
	h.m.sendFails.WithLabelValues(hostLabel).Inc()
	marked, outcome := "no redis configured", "none"
	if h.pending != nil {
		// The request's own context may be nearly spent; the mark gets a
		// short budget of its own.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 200*time.Millisecond)
		merr := h.pending.MarkPending(mctx, c.User, c.Host, c.Time)
		cancel()
		if merr != nil {
			h.m.pending.WithLabelValues("error").Inc()
			marked, outcome = "marking pending failed: "+merr.Error(), "error"
		} else {
			h.m.pending.WithLabelValues("ok").Inc()
			marked, outcome = "marked pending for the sweep", "ok"
		}
	}
	attrs := []any{"user", c.User, "host", c.Host, "id", c.ID, "err", err, "recovery", marked}
	if outcome != "ok" {
		h.m.lost.WithLabelValues(hostLabel).Inc()
		attrs = append(attrs, "fix", lostFix)
	}
	h.sendFailLogs.Log(ctx, h.log, slog.LevelError, hostLabel+"\x00"+outcome, "change not handed to the broker", attrs...)
	return writeReply(w, http.StatusServiceUnavailable, reply{Status: "error", ID: c.ID, Error: "broker unavailable: " + marked})
}

// authorized checks the configured credentials in constant time.
func (h *Handler) authorized(r *http.Request) bool {
	switch {
	case h.opts.Token != "":
		// The scheme is case-insensitive (RFC 9110 section 11.1).
		scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return false
		}
		tok = strings.TrimLeft(tok, " ")
		sum := sha256.Sum256([]byte(tok))
		return subtle.ConstantTimeCompare(sum[:], h.tokenSum[:]) == 1
	case h.opts.BasicUser != "":
		// r.BasicAuth compares the scheme case-insensitively.
		u, p, ok := r.BasicAuth()
		if !ok {
			return false
		}
		us, ps := sha256.Sum256([]byte(u)), sha256.Sum256([]byte(p))
		return subtle.ConstantTimeCompare(us[:], h.userSum[:])&subtle.ConstantTimeCompare(ps[:], h.passSum[:]) == 1
	}
	return true
}

// CheckHost accepts what can name a Dovecot host in a CloudEvent source
// and a metric label: what the host map takes as a host's name
// (doveadm.ValidateHost), but not empty. Ingest refuses (400) an event
// whose host it does not accept, before it looks at what the event is.
func CheckHost(host string) error {
	if host == "" {
		return errors.New(`no host: the event has no "hostname" (or pass ?host=NAME in the exporter URL)`)
	}
	return doveadm.ValidateHost(host)
}
