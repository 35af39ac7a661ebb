package doveadm_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// FuzzHTTPSyncReply: whatever a doveadm HTTP server answers (status and
// body; "TAG" in the body becomes the request's tag), Sync returns a state
// or an *Error with a kind, never panics, and never shows the password,
// even when the body repeats it next to quotes and at the 200-byte cut of
// a snippet.
//
//	go test -run '^$' -fuzz FuzzHTTPSyncReply -fuzztime 60s ./pkg/doveadm/
func FuzzHTTPSyncReply(f *testing.F) {
	f.Add(200, `[["doveadmResponse",[{"state":"AQAA"}],"TAG"]]`, "", "s3cret-pw")
	f.Add(200, `[["doveadmResponse",[{"state":"AQAA"}],"\u00`, `"]]`, "41414141")
	f.Add(200, `[["error",{"type":"exitCode","exitCode":75},"TAG"]]`, "", "s3cret-pw")
	f.Add(200, `[["error",{"type":"`, `"},"TAG"]]`, `pa"ss\word`)
	f.Add(200, `[["doveadmResponse",[{"state":1}],"`, `"]]`, "s3cret-pw")
	f.Add(500, strings.Repeat("x", 195), "", "s3cret-pw")
	f.Add(404, "<html>", "</html>", "pässwörd")
	f.Add(200, "", "", "s3cret-pw")
	f.Add(200, `[["doveadmResponse",[],"TAG"],[]]`, "", "s3cret-pw")
	// The password's last byte and the bytes after it decode as one
	// character: shown decoded, the reply's strings would keep its start.
	f.Add(200, `[["error",{"type":"`, "\xb2\xb2\"},\"TAG\"]]", "\xb00\xeb")
	f.Add(200, `[["`, "\xb2\xb2\",{},\"TAG\"]]", "\xb00\xeb")
	f.Add(200, `[["doveadmResponse",[],"`, "\xb2\xb2\"]]", "\xb00\xeb")

	var (
		mu     sync.Mutex
		status int
		reply  string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req [][]any
		body, _ := io.ReadAll(r.Body)
		tag := ""
		if err := json.Unmarshal(body, &req); err == nil && len(req) == 1 && len(req[0]) == 3 {
			tag, _ = req[0][2].(string)
		}
		mu.Lock()
		code, out := status, strings.ReplaceAll(reply, "TAG", tag)
		mu.Unlock()
		w.WriteHeader(code)
		_, _ = io.WriteString(w, out)
	}))
	f.Cleanup(srv.Close)
	tr := doveadm.NewHTTP(nil, 5*time.Second)

	f.Fuzz(func(t *testing.T, code int, before, after, pw string) {
		// The password starts with a mark that no message of Sync spells,
		// so that finding it in one is a leak, not a coincidence.
		password := "Zq9#" + pw
		if code < 200 || code > 599 || strings.Contains(password, "TAG") {
			return
		}
		mu.Lock()
		status, reply = code, before+password+after
		mu.Unlock()
		ep := doveadm.Endpoint{Name: "mail-a", URL: srv.URL + "/doveadm/v1", User: "doveadm", Password: password, Destination: "tcp:replica:12345"}
		res, err := tr.Sync(context.Background(), ep, doveadm.SyncRequest{User: "u1", Destination: ep.Destination})
		if err == nil {
			if code != http.StatusOK {
				t.Fatalf("HTTP %d answered as success: %+v", code, res)
			}
			return
		}
		var de *doveadm.Error
		if !errors.As(err, &de) || de.Kind == "" {
			t.Fatalf("not a doveadm error with a kind: %#v", err)
		}
		msg := err.Error()
		quoted := strconv.Quote(password)
		if strings.Contains(msg, password) || strings.Contains(msg, quoted[1:len(quoted)-1]) {
			t.Fatalf("the error shows the password %q: %s", password, msg)
		}
		// A snippet is cut at 200 bytes: no cut may leave the password's
		// first half behind when the body held it whole.
		if half := password[:len(password)/2+1]; len(half) >= 4 && strings.Contains(msg, half) && !strings.Contains(before+after, half) {
			t.Fatalf("the error shows the start of the password %q: %s", password, msg)
		}
	})
}
