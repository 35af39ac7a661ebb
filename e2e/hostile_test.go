package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// forgedHost is the hostname of the events the test forges, so that its
// counts do not mix with those of Dovecot's real events.
const forgedHost = "mail-forged.test"

// dovecotEvent is a Dovecot 2.4 imap_command_finished event as the
// exporter sends it, with fields overridden by extra.
func dovecotEvent(user, cmd, reply string, categories []string, extra map[string]any) []byte {
	fields := map[string]any{"user": user, "session": "e2eSession", "cmd_tag": "a1", "cmd_name": cmd,
		"cmd_args": "INBOX {10}", "tagged_reply_state": reply, "tagged_reply": reply + " done", "mailbox": "INBOX"}
	for k, v := range extra {
		fields[k] = v
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(map[string]any{"event": "imap_command_finished", "hostname": forgedHost,
		"start_time": now, "end_time": now, "categories": categories, "fields": fields})
	return b
}

// request is one request to ingest and what ingest must answer.
type request struct {
	name        string
	method      string
	path        string
	contentType string
	auth        string // "good", "bad" or "none"
	body        []byte
	status      int
	// reason is the label of dovewarden_ingest_requests_rejected_total
	// that must count it, or of ..._events_dropped_total when status is
	// 200.
	reason string
}

// hostileRequests are garbage and hostile requests, each with the answer
// docs/configuration.md promises.
func hostileRequests() []request {
	appendEv := func(user string) []byte {
		return dovecotEvent(user, "APPEND", "OK", []string{"service:imap", "imap"}, nil)
	}
	junk := make([]byte, 4096)
	_, _ = rand.Read(junk)
	huge := bytes.Repeat([]byte(`{"event":"x",`), 40000) // 520 KB, over the default --max-body
	deep := []byte(strings.Repeat("[", 30000) + strings.Repeat("]", 30000))
	return []request{
		{"GET", "GET", "/events", "", "good", nil, http.StatusMethodNotAllowed, "method"},
		{"DELETE", "DELETE", "/", "", "good", nil, http.StatusMethodNotAllowed, "method"},
		{"unknown path", "POST", "/admin/../../etc/passwd", "application/json", "good", appendEv("u1"), http.StatusNotFound, "path"},
		{"no credentials", "POST", "/events", "application/json", "none", appendEv("u1"), http.StatusUnauthorized, "unauthorized"},
		{"wrong password", "POST", "/events", "application/json", "bad", appendEv("u1"), http.StatusUnauthorized, "unauthorized"},
		{"text/plain", "POST", "/events", "text/plain", "good", appendEv("u1"), http.StatusUnsupportedMediaType, "content_type"},
		{"no content type", "POST", "/events", "", "good", appendEv("u1"), http.StatusUnsupportedMediaType, "content_type"},
		{"over max-body", "POST", "/events", "application/json", "good", huge, http.StatusRequestEntityTooLarge, "too_large"},
		{"truncated JSON", "POST", "/events", "application/json", "good", []byte(`{"event":"imap_command_finished","fields":{`), http.StatusBadRequest, "malformed"},
		{"binary junk", "POST", "/events", "application/json", "good", junk, http.StatusBadRequest, "malformed"},
		{"deep nesting", "POST", "/events", "application/json", "good", deep, http.StatusBadRequest, "malformed"},
		{"JSON array", "POST", "/events", "application/json", "good", []byte(`[1,2,3]`), http.StatusBadRequest, "malformed"},
		{"wrong field type", "POST", "/events", "application/json", "good",
			[]byte(`{"event":"imap_command_finished","hostname":"` + forgedHost + `","fields":{"user":["u1"]}}`), http.StatusBadRequest, "malformed"},
		{"hostile hostname", "POST", "/events", "application/json", "good",
			bytes.Replace(appendEv("u1"), []byte(forgedHost), []byte(`mail a/../\n`), 1), http.StatusBadRequest, "bad_host"},
		{"dsync's own event", "POST", "/events", "application/json", "good",
			dovecotEvent("u1", "APPEND", "OK", []string{"service:doveadm"}, nil), http.StatusOK, "doveadm"},
		{"failed command", "POST", "/events", "application/json", "good",
			dovecotEvent("u1", "APPEND", "BAD", []string{"service:imap"}, nil), http.StatusOK, "failed"},
		{"read-only command", "POST", "/events", "application/json", "good",
			dovecotEvent("u1", "SELECT", "OK", []string{"service:imap"}, nil), http.StatusOK, "read_only"},
	}
}

// hostileUsers are usernames doveadm must never see: a user mask, an
// option, control characters, an oversized name. Ingest may refuse them
// (4xx) or hand them on; then sync must refuse them (400, counted) and the
// Broker hands them to the dead-letter sink (docs/events.md).
var hostileUsers = []string{"*", "u?", "-oMail=/tmp", "u1\r\nINJECT", strings.Repeat("x", 300)}

// TestHostileRequests is scenario 7: garbage and hostile requests to
// ingest while real changes replicate. Each gets the documented answer and
// is counted; the processes keep serving; the real changes converge and
// nothing else changes on either server.
func TestHostileRequests(t *testing.T) {
	eachCase(t, []pairCase{{shapeLocal, v24, v24}, {shapeSplit, v23, v23}}, hostileScenario)
}

func hostileScenario(t *testing.T, c pairCase) {
	users := []string{"u1", "u2"}
	cfg := c.config(users...)
	cfg.exporterAuth = "dovecot:exporter-secret"
	cfg.tls = true // the credentials cross the network encrypted
	s := newSystem(t, cfg)
	untouched, _ := s.snapshots("u2")
	reqs := hostileRequests()
	// Several requests share a counter: count per counter.
	before, sent := map[counter]float64{}, map[counter]int{}
	for _, r := range reqs {
		before[counterOf(r)] = s.ingestCount(counterOf(r))
	}
	syncBase := s.syncMetrics()
	syncRejected := metric(t, syncBase, "dovewarden_sync_events_rejected_total")

	// Real changes, with the exporter's credentials, during the barrage.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := dovecottest.LoginIMAP(s.ctx, s.a.IMAPAddr, "u1", password)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		for i := 0; i < 20; i++ {
			if _, err := c.Append(s.ctx, "INBOX", "", message("u1", fmt.Sprintf("real-%d", i), "x")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	const rounds = 3
	answers := map[string][]int{}
	for round := 0; round < rounds; round++ {
		for _, r := range reqs {
			if got := s.post(r); got != r.status {
				t.Errorf("%s: ingest answered %d, want %d", r.name, got, r.status)
			}
			sent[counterOf(r)]++
		}
		for _, u := range hostileUsers {
			ev := dovecotEvent(u, "APPEND", "OK", []string{"service:imap"}, nil)
			answers[u] = append(answers[u], s.post(request{name: "user " + u, method: "POST", path: "/events",
				contentType: "application/json", auth: "good", body: ev}))
		}
	}
	wg.Wait()

	for c, n := range sent {
		if got := s.ingestCount(c) - before[c]; int(got) != n {
			t.Errorf("ingest counted %v requests with reason %s (dropped: %v), want %d", got, c.reason, c.dropped, n)
		}
	}
	for _, p := range []*proc{s.local, s.ingest, s.sync, s.broker} {
		if p != nil {
			p.checkAlive()
		}
	}
	snaps := s.awaitConverged(users...)
	wantMessages(t, snaps["u1"], "real", 20)
	if !snaps["u2"].equal(untouched) {
		t.Errorf("u2 changed though only garbage named it:\n%s", diff(untouched, snaps["u2"]))
	}
	s.checkHostileUsers(answers, syncBase, syncRejected, rounds)
}

// checkHostileUsers checks that each hostile username was refused by
// ingest (4xx), or handed on (202) and then refused by sync, counted, and
// given to the dead-letter sink; and that no dsync result names one.
func (s *system) checkHostileUsers(answers map[string][]int, syncBase string, syncRejected float64, rounds int) {
	t := s.t
	handedOn := 0
	for _, u := range hostileUsers {
		codes := answers[u]
		switch {
		case allIn(codes, 400, 499):
		case allIn(codes, 202, 202):
			handedOn++
		case strings.ContainsAny(u, "\r\n") && allIn(codes, 503, 503):
			t.Errorf("BUG: a username with CR/LF (%q) is not refused by ingest, and the change cannot travel as a "+
				"CloudEvent in binary HTTP mode (ce-subject is a header): ingest answers 503, logs an error and marks the "+
				"name pending in Redis, where it should answer 400 (invalid_event)", u)
		default:
			t.Errorf("hostile user %q: ingest answered %v; want a 4xx, or 202 and sync refusing it", u, codes)
		}
	}
	// Sync refuses what ingest handed on, and the Broker gives it to the
	// dead-letter sink (the alerting subscriber).
	err := poll(s.ctx, convergeLimit/3, 100*time.Millisecond, func() error {
		if got := metric(t, syncBase, "dovewarden_sync_events_rejected_total") - syncRejected; got < float64(rounds*handedOn) {
			return fmt.Errorf("sync refused %v events of hostile users, want %d", got, rounds*handedOn)
		}
		var missing []string
		for _, u := range hostileUsers {
			if !allIn(answers[u], 202, 202) {
				continue
			}
			dead := 0
			for _, r := range s.events.results("org.dovewarden.mailbox.changed") {
				// Ingest lower-cases names (--username-format %Ln).
				if strings.EqualFold(r.User, u) {
					dead++
				}
			}
			if dead < rounds {
				m := fmt.Sprintf("%q (%d of %d)", u, dead, rounds)
				if strings.ContainsAny(u, "\r\n") {
					m += " [BUG: ingest hands on a username with CR/LF; the broker cannot POST the refused event to the " +
						"HTTP dead-letter sink (ce-subject is a header), retries that as a transport error for minutes, " +
						"holding a slot of the lane's queue, then drops it]"
				}
				missing = append(missing, m)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("the dead-letter sink lacks the refused events of hostile users %s", strings.Join(missing, ", "))
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	for _, typ := range []string{"org.dovewarden.replication.succeeded", "org.dovewarden.replication.failed"} {
		for _, r := range s.events.results(typ) {
			for _, u := range hostileUsers {
				if strings.EqualFold(r.User, u) {
					t.Errorf("%s for hostile user %q: doveadm was called with it", typ, u)
				}
			}
		}
	}
}

// allIn reports whether every code is within [lo, hi].
func allIn(codes []int, lo, hi int) bool {
	for _, c := range codes {
		if c < lo || c > hi {
			return false
		}
	}
	return len(codes) > 0
}

// post sends r to ingest and returns the status.
func (s *system) post(r request) int {
	s.t.Helper()
	req, err := http.NewRequestWithContext(s.ctx, r.method, s.ingestBase+r.path, bytes.NewReader(r.body))
	if err != nil {
		s.t.Fatal(err)
	}
	if r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	user, pass, _ := strings.Cut(s.cfg.exporterAuth, ":")
	switch r.auth {
	case "good":
		req.SetBasicAuth(user, pass)
	case "bad":
		req.SetBasicAuth(user, pass+"x")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s: %v", r.name, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// counter names one of ingest's counters: dropped events or rejected
// requests, by reason.
type counter struct {
	dropped bool
	reason  string
}

func counterOf(r request) counter { return counter{dropped: r.status/100 == 2, reason: r.reason} }

// ingestCount reads one of ingest's counters.
func (s *system) ingestCount(c counter) float64 {
	if c.dropped {
		return metric(s.t, s.ingestBase, "dovewarden_ingest_events_dropped_total", `reason="`+c.reason+`"`, `host="`+forgedHost+`"`)
	}
	return metric(s.t, s.ingestBase, "dovewarden_ingest_requests_rejected_total", `reason="`+c.reason+`"`)
}
