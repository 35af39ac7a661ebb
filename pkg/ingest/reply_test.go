package ingest

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"
)

// checkReply checks that writeReply writes what json.Encoder writes.
func checkReply(t *testing.T, r reply) {
	t.Helper()
	var want bytes.Buffer
	if err := json.NewEncoder(&want).Encode(r); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	writeReply(rec, 202, r)
	if rec.Body.String() != want.String() {
		t.Fatalf("reply %+v: wrote %q, json.Encoder %q", r, rec.Body, want.String())
	}
	if rec.Code != 202 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("reply %+v: status %d, content type %q", r, rec.Code, rec.Header().Get("Content-Type"))
	}
}

func TestWriteReply_AsEncoder(t *testing.T) {
	for _, r := range []reply{
		{Status: "accepted", ID: "6f1d3c4e-2b0a-4c55-9d3e-64766e776172"},
		{Status: "dropped", Reason: "read_only"},
		{Status: "rejected", Reason: rejectMalformed, Error: `invalid JSON at byte 1: invalid character 'h' looking for beginning of value`},
		{Status: "rejected", Reason: rejectHost, Error: `host "a<b>&c": only letters`},
		{Status: "error", ID: "x", Error: "broker unavailable: marked pending for the sweep"},
		{Status: "rejected", Error: "tab\tnewline\n\u2028 ü \xff"},
		{},
	} {
		checkReply(t, r)
	}
}

func FuzzWriteReply(f *testing.F) {
	f.Add("accepted", "id", "", "")
	f.Add("rejected", "", "malformed", `field "x": <&>`)
	f.Fuzz(func(t *testing.T, status, id, reason, msg string) {
		checkReply(t, reply{Status: status, ID: id, Reason: reason, Error: msg})
	})
}
