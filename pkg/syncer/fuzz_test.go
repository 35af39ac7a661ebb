package syncer

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzServeHTTP: whatever arrives, the receiver answers with a status and
// never crashes; bad input is a 4xx, never a 5xx (Redis and doveadm are up
// here, so a 5xx could only be a bug).
func FuzzServeHTTP(f *testing.F) {
	f.Add("application/cloudevents+json", `{"specversion":"1.0","id":"1","source":"mail-a","type":"org.dovewarden.mailbox.changed","subject":"u1","data":{"user":"u1"}}`, "", "")
	f.Add("application/json", `{"user":"u1"}`, "org.dovewarden.replication.requested", "u1")
	f.Add("application/json", `{"full":"yes"}`, "org.dovewarden.replication.requested", "")
	f.Add("application/json", `null`, "org.dovewarden.mailbox.changed", "-rf")
	f.Add("application/cloudevents+json", `{"specversion":"0.3","id":"1"}`, "", "")
	f.Add("application/cloudevents-batch+json", `[{}]`, "", "")
	f.Add("text/plain", "\x00\xff", "x", "u\n1")
	fx := newFixture(f)
	f.Fuzz(func(t *testing.T, ctype, body, typ, subject string) {
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		if typ != "" {
			req.Header.Set("Ce-Specversion", "1.0")
			req.Header.Set("Ce-Id", "fuzz")
			req.Header.Set("Ce-Source", "mail-a")
			req.Header.Set("Ce-Type", typ)
			req.Header.Set("Ce-Subject", subject)
		}
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, req)
		if rec.Code >= 500 || rec.Code < 200 {
			t.Fatalf("status %d for %q %q %q %q: %s", rec.Code, ctype, body, typ, subject, rec.Body)
		}
		if rec.Code >= 400 && strings.TrimSpace(rec.Body.String()) == "" {
			t.Fatalf("status %d without a reason", rec.Code)
		}
	})
}
