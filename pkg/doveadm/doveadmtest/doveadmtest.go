// Package doveadmtest is a fake doveadm HTTP API for tests: it answers the
// "sync" command like Dovecot 2.3/2.4 do (states, exit codes, empty
// replies, 401) and the "user" listing the sweep uses, with chosen
// latency, records every call, and reports any
// two dsyncs of one user that overlap, across every fake host sharing a
// Tracker.
package doveadmtest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Password is the doveadm_password every fake accepts unless told otherwise.
const Password = "fake-doveadm-secret"

// Call is one sync the fake received.
type Call struct {
	Host        string
	User        string
	Destination string
	State       string
	Full        bool
	LockTimeout int
	// Timeout is dsync's stall timeout (timeout), in seconds; 0: not sent.
	Timeout int
	AllNS   bool
	// Exclude is excludeMailbox: the mailboxes dsync leaves out.
	Exclude []string
	// Start is when the fake received the call, End when it answered.
	Start, End time.Time
	// Reply is what it answered.
	Reply Reply
}

// Reply is the fake's answer to one sync.
type Reply struct {
	// ExitCode, when non-zero, answers [["error",{"type":"exitCode",...}]].
	ExitCode int
	// ErrorType, when set, answers a non-exit-code doveadm error.
	ErrorType string
	// Empty answers 200 with an empty body.
	Empty bool
	// Status, when set, answers that HTTP status with a short body: Body,
	// or the status's text.
	Status int
	Body   string
	// State is the new state of a success; default "state-<n>".
	State string
	// Delay is added to the server's latency.
	Delay time.Duration
}

// Tracker watches dsyncs across fake hosts: two of one user at once is a
// violation of the per-user lock.
type Tracker struct {
	t        testing.TB
	mu       sync.Mutex
	inflight map[string]string // user -> host running it
	overlaps int
	calls    []Call
}

// NewTracker makes a tracker that fails t on every overlap.
func NewTracker(t testing.TB) *Tracker { return &Tracker{t: t, inflight: map[string]string{}} }

func (tr *Tracker) begin(host, user string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if other, ok := tr.inflight[user]; ok {
		tr.overlaps++
		tr.t.Errorf("doveadmtest: two dsyncs of %q at once (on %s and %s)", user, other, host)
		return
	}
	tr.inflight[user] = host
}

func (tr *Tracker) end(c Call) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.inflight[c.User] == c.Host {
		delete(tr.inflight, c.User)
	}
	tr.calls = append(tr.calls, c)
}

// Overlaps counts the overlapping dsyncs seen.
func (tr *Tracker) Overlaps() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.overlaps
}

// Calls returns every finished call, in the order they finished.
func (tr *Tracker) Calls() []Call {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]Call(nil), tr.calls...)
}

// CallsOf returns the finished calls of one user.
func (tr *Tracker) CallsOf(user string) []Call {
	var out []Call
	for _, c := range tr.Calls() {
		if c.User == user {
			out = append(out, c)
		}
	}
	return out
}

// Server is one fake Dovecot host's doveadm HTTP API.
type Server struct {
	*httptest.Server
	Name     string
	Password string
	// Latency delays every sync answer.
	Latency time.Duration
	// Respond chooses the answer to a call; nil answers success.
	Respond func(c Call) Reply
	// OnStart, when set, runs when a sync arrives (before Latency): tests
	// block on it to hold a dsync open.
	OnStart func(c Call)
	Tracker *Tracker

	// Users is what the "user" command with userMask "*" lists
	// (users.go); RespondList, when set, chooses that answer instead.
	Users       []string
	RespondList func() Reply

	mu        sync.Mutex
	n         int
	listCalls int
}

// NewServer starts a fake named name on 127.0.0.1; tr may be shared by
// several fakes (nil makes one).
func NewServer(t testing.TB, name string, tr *Tracker) *Server {
	return newServer(t, name, tr, httptest.NewServer)
}

// NewTLSServer is NewServer serving HTTPS, with httptest's certificate
// (Certificate: for 127.0.0.1, ::1 and example.com, by a CA of its own).
func NewTLSServer(t testing.TB, name string, tr *Tracker) *Server {
	return newServer(t, name, tr, httptest.NewTLSServer)
}

func newServer(t testing.TB, name string, tr *Tracker, start func(http.Handler) *httptest.Server) *Server {
	if tr == nil {
		tr = NewTracker(t)
	}
	s := &Server{Name: name, Password: Password, Tracker: tr}
	s.Server = start(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// APIURL is the URL of the fake doveadm HTTP API.
func (s *Server) APIURL() string { return s.URL + "/doveadm/v1" }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/doveadm/v1" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="doveadm"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	var req [][]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req) != 1 || len(req[0]) != 3 {
		writeJSON(w, []any{[]any{"error", map[string]any{"type": "invalidRequest"}, ""}})
		return
	}
	var cmd, tag string
	var p struct {
		User          string   `json:"user"`
		Destination   []string `json:"destination"`
		State         *string  `json:"state"`
		FullSync      bool     `json:"fullSync"`
		LockTimeout   int      `json:"lockTimeout"`
		Timeout       int      `json:"timeout"`
		AllNamespaces bool     `json:"allNamespaces"`
		Exclude       []string `json:"excludeMailbox"`
	}
	_ = json.Unmarshal(req[0][0], &cmd)
	_ = json.Unmarshal(req[0][2], &tag)
	if cmd == "user" {
		s.serveUsers(w, r, req[0][1], tag)
		return
	}
	if err := json.Unmarshal(req[0][1], &p); err != nil || cmd != "sync" || len(p.Destination) != 1 || p.State == nil {
		writeJSON(w, []any{[]any{"error", map[string]any{"type": "unknownMethod"}, tag}})
		return
	}
	c := Call{Host: s.Name, User: p.User, Destination: p.Destination[0], State: *p.State, Full: p.FullSync,
		LockTimeout: p.LockTimeout, Timeout: p.Timeout, AllNS: p.AllNamespaces, Exclude: p.Exclude, Start: time.Now()}
	s.Tracker.begin(s.Name, c.User)
	if s.OnStart != nil {
		s.OnStart(c)
	}
	s.mu.Lock()
	s.n++
	n := s.n
	s.mu.Unlock()
	var rep Reply
	if s.Respond != nil {
		rep = s.Respond(c)
	}
	if d := s.Latency + rep.Delay; d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}
	c.Reply, c.End = rep, time.Now()
	s.Tracker.end(c)
	if writeFailure(w, rep, tag) {
		return
	}
	st := rep.State
	if st == "" {
		st = fmt.Sprintf("state-%s-%d", s.Name, n)
	}
	writeJSON(w, []any{[]any{"doveadmResponse", []any{map[string]string{"state": st}}, tag}})
}

// writeFailure answers the failure rep describes, if it describes one:
// an HTTP status, an empty 200 (2.3 with the destination down), an exit
// code or another doveadm error.
func writeFailure(w http.ResponseWriter, rep Reply, tag string) bool {
	switch {
	case rep.Status != 0:
		body := rep.Body
		if body == "" {
			body = http.StatusText(rep.Status)
		}
		http.Error(w, body, rep.Status)
	case rep.Empty:
		w.WriteHeader(http.StatusOK)
	case rep.ExitCode != 0:
		writeJSON(w, []any{[]any{"error", map[string]any{"type": "exitCode", "exitCode": rep.ExitCode}, tag}})
	case rep.ErrorType != "":
		writeJSON(w, []any{[]any{"error", map[string]any{"type": rep.ErrorType}, tag}})
	default:
		return false
	}
	return true
}

// authorized checks credentials as Dovecot 2.3 and 2.4 do: Basic auth as
// doveadm, or the Authorization scheme X-Dovecot-API with the API key in
// base64 (a header of that name is not looked at).
func (s *Server) authorized(r *http.Request) bool {
	if scheme, k, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "X-Dovecot-API") {
		b, err := base64.StdEncoding.DecodeString(k)
		return err == nil && string(b) == s.Password
	}
	u, p, ok := r.BasicAuth()
	return ok && u == "doveadm" && p == s.Password
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Answers returns a Respond function that gives the listed replies in
// order, then success.
func Answers(replies ...Reply) func(Call) Reply {
	var mu sync.Mutex
	return func(Call) Reply {
		mu.Lock()
		defer mu.Unlock()
		if len(replies) == 0 {
			return Reply{}
		}
		r := replies[0]
		replies = replies[1:]
		return r
	}
}

// ByUser returns a Respond function choosing by username prefix.
func ByUser(m map[string]Reply) func(Call) Reply {
	return func(c Call) Reply {
		for prefix, r := range m {
			if strings.HasPrefix(c.User, prefix) {
				return r
			}
		}
		return Reply{}
	}
}
