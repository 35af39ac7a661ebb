package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// TestLocal_ChangeRunsDsyncThroughTheEmbeddedBroker drives `dovewarden
// local` end to end with a fake doveadm: a Dovecot event posted to ingest
// goes through the embedded broker (real Trigger manifests) to the sync
// handler, which runs dsync and records the success in Redis.
func TestLocal_ChangeRunsDsyncThroughTheEmbeddedBroker(t *testing.T) {
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	// The sweep at start replicates users nobody changed yet.
	fake.SetUsers("u1", "quiet")
	env, _, stderr := testEnv(map[string]string{
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "5s",
	}, "")
	base, stop := serve(t, env, stderr, "local", "--listen", "127.0.0.1:0",
		"--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1")

	req, _ := http.NewRequest("POST", base+"/events", strings.NewReader(deliveryEvent))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /events: %d", resp.StatusCode)
	}

	deadline := time.Now().Add(10 * time.Second)
	for (len(tr.CallsOf("u1")) == 0 || len(tr.CallsOf("quiet")) == 0) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	calls := tr.CallsOf("u1")
	if len(calls) == 0 || calls[0].Destination != "tcp:127.0.0.1:1" {
		t.Fatalf("dsync calls %+v, want some to the destination\n%s", calls, stderr)
	}
	if q := tr.CallsOf("quiet"); len(q) != 1 || !q[0].Full {
		t.Errorf("the sweep at start: dsyncs of an unchanged user %+v, want one full sync", q)
	}

	var st struct {
		User        string    `json:"user"`
		LastSuccess time.Time `json:"last_success"`
	}
	for time.Now().Before(deadline) {
		resp, err = http.Get(base + "/status/u1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("status: %v: %s", err, body)
		}
		if !st.LastSuccess.IsZero() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.User != "u1" || st.LastSuccess.IsZero() {
		t.Errorf("status %+v", st)
	}
	resp, err = http.Get(base + "/status/-bad")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("hostile status name: %d", resp.StatusCode)
	}

	if err := stop(); err != nil {
		t.Fatalf("local returned %v", err)
	}
	if tr.Overlaps() != 0 {
		t.Error("overlapping dsyncs")
	}
}
