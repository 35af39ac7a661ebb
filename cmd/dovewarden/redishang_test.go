package main

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// hungRedisURL is srv's URL with read and write timeouts short enough
// that a call to a Redis that hangs gives up (retries included) within
// a couple of seconds, as it does after about 12 s with go-redis's
// defaults: the tests then need a hang of seconds, not of a minute.
func hungRedisURL(srv *redistest.Server) string {
	return srv.URL() + "?read_timeout=300ms&write_timeout=300ms"
}

// postChangeOf posts a delivery of user, timed now, to ingest and returns
// when it was made and ingest's status.
func postChangeOf(t *testing.T, base, user string) (time.Time, int) {
	t.Helper()
	at := time.Now().UTC()
	body := strings.NewReplacer(`"user":"u1"`, `"user":"`+user+`"`,
		`"end_time":"2026-11-29T10:00:00.000001Z"`, `"end_time":"`+at.Format(time.RFC3339Nano)+`"`).Replace(deliveryEvent)
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Post(base+"/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST /events of %s: %v", user, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return at, resp.StatusCode
}

// TestLocal_RedisHangLosesNoChange: a Redis that hangs (SIGSTOP, as a
// paused VM or a partition that drops packets) and comes back with its
// data. The Begin of each change delivered meanwhile gets no answer and
// is answered 503, but Redis runs it when it resumes: it takes the
// user's lock for an attempt nobody runs. The Broker's redelivery of the
// change used to find that lock held, leave a mark for its owner and be
// acknowledged, so the change (and every other one merged into that
// lock) waited for the lock to expire and then for a retry sweep,
// minutes later. The redelivery takes up the lost Begin's attempt
// instead, and every change accepted before or during the hang is
// replicated by a dsync that started after it, soon after the hang ends,
// with never two dsyncs of one user at once.
func TestLocal_RedisHangLosesNoChange(t *testing.T) {
	srv := redistest.Start(t)
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	users := []string{"h1", "h2", "h3", "h4"}
	fake.SetUsers(users...)
	base, stop, stderr := startLocalWith(t, fake, "--redis-url", hungRedisURL(srv), "--sweep-every", "0")
	deadline := time.Now().Add(10 * time.Second)
	for len(tr.Calls()) < len(users) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the sweep at start records its end

	thaw := srv.Freeze(t)
	accepted := map[string]time.Time{}
	hangEnd := time.Now().Add(5 * time.Second)
	for time.Now().Before(hangEnd) {
		for _, u := range users {
			at, code := postChangeOf(t, base, u)
			if code == http.StatusAccepted {
				accepted[u] = at
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	thaw()
	thawed := time.Now()
	if len(accepted) != len(users) {
		t.Fatalf("ingest accepted changes of %d users of %d during the hang", len(accepted), len(users))
	}
	var left []string
	for {
		left = left[:0]
		for u, at := range accepted {
			done := false
			for _, c := range tr.CallsOf(u) {
				done = done || (c.Start.After(at) && c.Reply.ExitCode == 0)
			}
			if !done {
				left = append(left, u)
			}
		}
		if len(left) == 0 || time.Since(thawed) > 15*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("15 s after the hang, no dsync after the last accepted change of %v\n%s", left, stderr)
	} else {
		t.Logf("every change replicated %v after the hang", time.Since(thawed).Round(time.Millisecond))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := tr.Overlaps(); n != 0 {
		t.Errorf("%d overlapping dsyncs", n)
	}
}

// TestLocal_ScrapeOfAHungRedisAnswersWithinASecond: the series read from
// Redis at scrape time give up after a second (docs/operations.md), also
// in local mode and sync, whose Redis client does not end calls at their
// context's deadline: a Redis that hangs used to hold each scrape for the
// client's read timeout and its retries (5 s with the defaults).
func TestLocal_ScrapeOfAHungRedisAnswersWithinASecond(t *testing.T) {
	srv := redistest.Start(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	base, _, _ := startLocalWith(t, fake, "--redis-url", srv.URL(), "--sweep-every", "0")
	srv.Freeze(t)
	c := http.Client{Timeout: 10 * time.Second}
	began := time.Now()
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(began)
	if resp.StatusCode != http.StatusOK || took > 1500*time.Millisecond {
		t.Errorf("/metrics with Redis hung: %d after %v, want 200 within a second and a bit", resp.StatusCode, took)
	}
	if strings.Contains(string(body), "dovewarden_sync_pending_users ") {
		t.Errorf("with Redis hung, the pending users are still served")
	}
}

// TestLocal_StatusOfAHungRedisAnswers503: /status and /status/{user}
// read Redis; while it hangs they answer 503 after statusBudget, as they
// do at once while it is down, instead of holding the request for as
// long as the hang lasts (30 s and more measured).
func TestLocal_StatusOfAHungRedisAnswers503(t *testing.T) {
	srv := redistest.Start(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	base, _, _ := startLocalWith(t, fake, "--redis-url", srv.URL(), "--sweep-every", "0")
	srv.Freeze(t)
	var wg sync.WaitGroup
	for _, path := range []string{"/status", "/status/u1"} {
		wg.Go(func() {
			c := http.Client{Timeout: 15 * time.Second}
			began := time.Now()
			resp, err := c.Get(base + path)
			if err != nil {
				t.Errorf("GET %s with Redis hung: %v after %v", path, err, time.Since(began))
				return
			}
			resp.Body.Close()
			if took := time.Since(began); resp.StatusCode != http.StatusServiceUnavailable || took > statusBudget+time.Second {
				t.Errorf("GET %s with Redis hung: %d after %v, want 503 within %v", path, resp.StatusCode, took, statusBudget)
			}
		})
	}
	wg.Wait()
}
