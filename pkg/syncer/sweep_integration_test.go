package syncer

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// A whole sweep through the sync function as deployed: settings from the
// environment, Build, real Redis, two Dovecot hosts (fake doveadm), the
// HTTP receiver. The test plays the Broker: it posts the sweep.requested,
// feeds every continuation back, and delivers the replication.requested
// events the sweep sent through the results sink to the sync function, as
// the sync-low Trigger would.
func TestIntegrationRedis_SweepEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real redis-server")
	}
	rs := redistest.Start(t)
	tr := doveadmtest.NewTracker(t)
	a := doveadmtest.NewServer(t, "mail-a", tr)
	b := doveadmtest.NewServer(t, "mail-b", tr)
	var onlyA, onlyB []string
	for i := 1; i <= 15; i++ {
		onlyA = append(onlyA, fmt.Sprintf("u%02d", i))
	}
	onlyB = []string{"b1", "b2", "b3", "b4"}
	a.SetUsers(append([]string{"s1", "s2"}, onlyA...)...)
	b.SetUsers(append([]string{"s1", "s2", "bad*name"}, onlyB...)...)
	bk := &broker{}
	bsrv := httptest.NewServer(bk)
	defer bsrv.Close()

	dir := t.TempDir()
	hm := filepath.Join(dir, "hosts.json")
	os.WriteFile(hm, []byte(fmt.Sprintf(`{
		"mail-a": {"url": %q, "destination": "tcp:mail-b:12345"},
		"mail-b": {"url": %q, "destination": "tcp:mail-a:12345"}}`, a.APIURL(), b.APIURL())), 0o600)
	cfg, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL":             rs.URL(),
		"DOVEWARDEN_DOVEADM_URL":           a.APIURL(),
		"DOVEWARDEN_DOVEADM_PASSWORD":      doveadmtest.Password,
		"DOVEWARDEN_DESTINATION":           "tcp:mail-b:12345",
		"DOVEWARDEN_HOST_MAP_FILE":         hm,
		"DOVEWARDEN_RESULTS_SINK":          bsrv.URL,
		"DOVEWARDEN_MAX_ATTEMPTS":          "2",
		"DOVEWARDEN_RETRY_BACKOFF":         "1ms",
		"DOVEWARDEN_RETRY_BACKOFF_MAX":     "2ms",
		"DOVEWARDEN_SWEEP_BATCH_SIZE":      "4",
		"DOVEWARDEN_SWEEP_BATCH_INTERVAL":  "1ms",
		"DOVEWARDEN_FAILED_RETRY_INTERVAL": "1s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	sf := &sweepFixture{fixture: &fixture{broker: bk}, ssv: serveBuilt(t, cfg)}

	// sweep runs one sweep and returns the requests it sent, by user.
	var sent []cloudevents.Event
	sweep := func() map[string]contract.ReplicationRequested {
		t.Helper()
		before := len(bk.all())
		ev, err := contract.SweepRequest("test", "dovewarden/test", false)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			if i > 100 {
				t.Fatal("the sweep never ends")
			}
			resp, reply, body := sf.post(t, ev)
			if resp.StatusCode == http.StatusAccepted {
				break
			}
			if resp.StatusCode != http.StatusOK || reply == nil || reply.Type() != contract.TypeSweepRequested {
				t.Fatalf("sweep step %d: %d %v %q", i, resp.StatusCode, reply, body)
			}
			ev = *reply
		}
		sent = bk.all()[before:]
		return requestedUsers(t, sent)
	}
	// deliver hands the last sweep's requests to the sync function.
	deliver := func() {
		t.Helper()
		for _, ev := range sent {
			if ev.Type() == contract.TypeReplicationRequested {
				if resp, _, body := sf.post(t, ev); resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
					t.Fatalf("deliver %s: %d %q", ev.Subject(), resp.StatusCode, body)
				}
			}
		}
	}

	// 1. Nobody was ever replicated: every valid user once, full, from the
	// first host that lists it.
	first := sweep()
	if got, want := keys(first), sorted(append(append([]string{"s1", "s2"}, onlyA...), onlyB...)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("first sweep requested %v, want %v", got, want)
	}
	for u, d := range first {
		wantHost := "mail-a"
		if u[0] == 'b' {
			wantHost = "mail-b"
		}
		if !d.Full || d.Host != wantHost || d.Reason != "sweep:never" || d.Priority != "low" {
			t.Errorf("%s: %+v", u, d)
		}
	}
	deliver()
	if n := len(tr.Calls()); n != len(first) {
		t.Fatalf("%d dsyncs for %d requests", n, len(first))
	}

	// 2. Everyone was just replicated in full: nothing to do.
	if second := sweep(); len(second) != 0 {
		t.Errorf("second sweep requested %v", keys(second))
	}

	// 3. A change ingest could not hand to the Broker, and a user whose
	// replication failed after its last attempt: exactly those two.
	ctx := context.Background()
	st, _ := state.Open(state.Conn{URL: rs.URL()})
	defer st.Close()
	if err := st.MarkPending(ctx, "u03", "mail-a", time.Now()); err != nil {
		t.Fatal(err)
	}
	a.Respond = doveadmtest.ByUser(map[string]doveadmtest.Reply{"u05": {ExitCode: 75}})
	fail, _ := contract.Requested(change.Request{User: "u05", Host: "mail-a"}, "", "dovewarden/test")
	if resp, reply, _ := sf.post(t, fail); resp.StatusCode != 200 || reply.Type() != contract.TypeReplicationFailed {
		t.Fatalf("u05 should have failed: %d", resp.StatusCode)
	}
	a.Respond = nil
	// An administrator's sweep (this one's reason is "test") retries a
	// failed user at once, whatever --failed-retry-interval; u05 is
	// marked failed, and Redis's clock past its failure.
	waitRedisPast(t, st, "u05", time.Millisecond)
	third := sweep()
	if fmt.Sprint(keys(third)) != "[u03 u05]" || third["u03"].Reason != "sweep:pending" || third["u05"].Reason != "sweep:failed" ||
		third["u03"].Full || third["u05"].Full {
		t.Fatalf("third sweep requested %+v", third)
	}
	deliver()
	if s, _ := st.Status(ctx, "u05"); s.Failed || !s.PendingSince.IsZero() {
		t.Errorf("u05 after the retry: %+v", s)
	}
	if fourth := sweep(); len(fourth) != 0 {
		t.Errorf("fourth sweep requested %v", keys(fourth))
	}
	if tr.Overlaps() != 0 {
		t.Errorf("%d overlapping dsyncs", tr.Overlaps())
	}
}

// waitRedisPast waits until Redis's clock is past user's failure plus d.
func waitRedisPast(t *testing.T, st *state.Store, user string, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	s, err := st.Status(ctx, user)
	if err != nil || !s.Failed {
		t.Fatalf("%s is not marked failed: %+v %v", user, s, err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		now, err := st.Now(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !now.Before(s.FailedSince.Add(d)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis's clock stays at %s, before %s's failure at %s plus %s", now, user, s.FailedSince, d)
		}
	}
}

func keys(m map[string]contract.ReplicationRequested) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return sorted(out)
}

func sorted(s []string) []string {
	sort.Strings(s)
	return s
}
