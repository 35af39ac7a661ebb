package replicator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// notes records the failed attempts a replicator reports.
type notes struct {
	mu     sync.Mutex
	fs     []change.Failure
	asked  []asked
	askErr error
	// onFail, when set, runs after each failed attempt is noted.
	onFail func()
}

func (n *notes) AttemptFailed(_ context.Context, _ change.Request, f change.Failure) {
	n.mu.Lock()
	n.fs = append(n.fs, f)
	onFail := n.onFail
	n.mu.Unlock()
	if onFail != nil {
		onFail()
	}
}

func (n *notes) AskAgain(_ context.Context, req change.Request, at time.Time) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.asked = append(n.asked, asked{req, at})
	return n.askErr
}

type asked struct {
	req change.Request
	at  time.Time
}

func (n *notes) all() []change.Failure {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]change.Failure(nil), n.fs...)
}

type fixture struct {
	r      *Replicator
	a, b   *doveadmtest.Server
	mr     *miniredis.Miniredis
	rdb    *redis.Client
	st     *state.Store
	notes  *notes
	logs   *safebuf.Buffer
	reg    *prometheus.Registry
	tracks *doveadmtest.Tracker
}

var fast = Options{Owner: "test", LockTTL: time.Second, ClockSkew: 10 * time.Millisecond, MaxAttempts: 4,
	Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, RunAgainDelay: time.Millisecond, MaxRounds: 5,
	LockTimeout: 10 * time.Second}

// newFixture wires a replicator to miniredis and two fake Dovecot hosts,
// mail-a (the default, syncing to b) and mail-b (syncing to a).
func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	tr := doveadmtest.NewTracker(t)
	a, b := doveadmtest.NewServer(t, "mail-a", tr), doveadmtest.NewServer(t, "mail-b", tr)
	mr := miniredis.RunT(t)
	// No retries: the Redis-down test should not wait through them.
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	f := &fixture{a: a, b: b, mr: mr, rdb: rdb, st: state.New(rdb), notes: &notes{}, logs: &safebuf.Buffer{},
		reg: prometheus.NewRegistry(), tracks: tr}
	def := doveadm.Endpoint{Name: "mail-a", URL: a.APIURL(), User: "doveadm", Password: doveadmtest.Password, Destination: "tcp:mail-b:12345"}
	hosts := doveadm.NewHostMap(def, def, doveadm.Endpoint{Name: "mail-b", URL: b.APIURL(), Destination: "tcp:mail-a:12345"})
	f.r = New(o, f.st, doveadm.NewHTTP(nil, 5*time.Second), hosts, f.notes, f.reg, slog.New(slog.NewTextHandler(f.logs, nil)))
	return f
}

// hold makes the dsyncs on mail-a wait once they started (each says so
// on started) until release is called; with firstOnly, only the first
// waits. The test's end releases them too, so that a failed check leaves
// no dsync waiting for ever.
func (f *fixture) hold(t *testing.T, firstOnly bool) (started <-chan struct{}, release func()) {
	s, r := make(chan struct{}, 10), make(chan struct{})
	release = sync.OnceFunc(func() { close(r) })
	t.Cleanup(release)
	f.a.OnStart = func(doveadmtest.Call) {
		s <- struct{}{}
		if !firstOnly || len(f.tracks.Calls()) == 0 {
			<-r
		}
	}
	return s, release
}

func (f *fixture) replicate(t *testing.T, req change.Request) change.Result {
	t.Helper()
	if req.Priority == "" {
		req.Priority = change.High
	}
	res, err := f.r.Replicate(context.Background(), req)
	if err != nil {
		// Errorf, not Fatalf: tests call this from goroutines too, where
		// Fatalf must not be called. The zero result fails their checks.
		t.Errorf("Replicate(%+v): %v", req, err)
	}
	return res
}

func counter(t *testing.T, f *fixture, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != metrics.Namespace+"_"+name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				match = match && found
			}
			if match {
				sum += m.GetCounter().GetValue()
			}
		}
		return sum
	}
	return 0
}

func TestReplicate_SyncsThenCoversOlderChanges(t *testing.T) {
	f := newFixture(t, fast)
	changed := time.Now().Add(-time.Minute)

	res := f.replicate(t, change.Request{User: "u1", Host: "mail-a", Time: changed})

	// The user's first dsync has no state to start from: a full one.
	if res.Outcome != change.Synced || res.Destination != "tcp:mail-b:12345" || res.Coalesced != 1 || !res.Full || res.Attempts != 1 {
		t.Fatalf("result %+v", res)
	}
	if res.Lag < time.Minute || res.End.Before(res.Start) {
		t.Errorf("lag %v start %v end %v: want the lag from the change", res.Lag, res.Start, res.End)
	}
	// An older change (say, redelivered) is covered: no dsync.
	if res := f.replicate(t, change.Request{User: "u1", Host: "mail-a", Time: changed.Add(time.Second)}); res.Outcome != change.Covered {
		t.Errorf("older change: %+v", res)
	}
	// A newer change syncs again, incrementally, with the stored state.
	if res := f.replicate(t, change.Request{User: "u1", Host: "mail-a"}); res.Outcome != change.Synced {
		t.Errorf("new change: %+v", res)
	}
	calls := f.tracks.CallsOf("u1")
	if len(calls) != 2 || calls[0].State != "" || !calls[0].Full || calls[1].State != "state-mail-a-1" || calls[1].Full ||
		!calls[0].AllNS || calls[0].LockTimeout == 0 {
		t.Errorf("calls %+v", calls)
	}
	if got := counter(t, f, metrics.SyncCoalescedChanges, "how", "covered"); got != 1 {
		t.Errorf("coalesced{covered} = %v", got)
	}
}

func TestReplicate_HostMapPicksEndpointAndDestination(t *testing.T) {
	f := newFixture(t, fast)
	f.replicate(t, change.Request{User: "u1", Host: "mail-a"})
	f.replicate(t, change.Request{User: "u2", Host: "MAIL-B"})
	f.replicate(t, change.Request{User: "u3", Host: "unknown-host"})
	want := map[string]string{"u1": "mail-a tcp:mail-b:12345", "u2": "mail-b tcp:mail-a:12345", "u3": "mail-a tcp:mail-b:12345"}
	for user, w := range want {
		c := f.tracks.CallsOf(user)
		if len(c) != 1 || c[0].Host+" "+c[0].Destination != w {
			t.Errorf("%s: calls %+v, want %s", user, c, w)
		}
	}
}

// A host map whose keys are not the hostnames Dovecot reports (mail-a for
// mail-a.example.org) sends every change to the default host, silently
// before: the entry of the host it was meant for is never used. Each such
// host is named in the log once: a warning where the default is itself a
// named host, a note where it is not (a map may leave the default's own
// host out).
func TestReplicate_HostTheHostMapDoesNotNameIsLoggedOnce(t *testing.T) {
	f := newFixture(t, fast)
	for range 3 {
		f.replicate(t, change.Request{User: "u1", Host: "mail-b.example.org"})
	}
	f.replicate(t, change.Request{User: "u1", Host: "mail-a"})
	f.replicate(t, change.Request{User: "u1"})
	logs := f.logs.String()
	if n := strings.Count(logs, "the host map does not name it"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, logs)
	}
	for _, want := range []string{"level=WARN", "host=mail-b.example.org", "host_map=\"[mail-a mail-b]\"", "default.destination=tcp:mail-b:12345", "hostnames Dovecot reports"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}

	// The default is not among the named hosts: it may be the host the
	// map leaves out, so only a note.
	logs2 := &safebuf.Buffer{}
	def := doveadm.Endpoint{URL: f.a.APIURL(), User: "doveadm", Password: doveadmtest.Password, Destination: "tcp:mail-b:12345"}
	hosts := doveadm.NewHostMap(def, doveadm.Endpoint{Name: "mail-b", URL: f.b.APIURL(), Destination: "tcp:mail-a:12345"})
	r := New(fast, f.st, doveadm.NewHTTP(nil, 5*time.Second), hosts, f.notes, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(logs2, nil)))
	if _, err := r.Replicate(context.Background(), change.Request{User: "u2", Host: "mail-a.example.org", Priority: change.High}); err != nil {
		t.Fatal(err)
	}
	if got := logs2.String(); !strings.Contains(got, "level=INFO") || !strings.Contains(got, "host=mail-a.example.org") || strings.Contains(got, "level=WARN") {
		t.Errorf("want one note naming mail-a.example.org:\n%s", got)
	}
}

func TestReplicate_RetriesTempfailWithBackoffAndReportsEachAttempt(t *testing.T) {
	f := newFixture(t, fast)
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75}, doveadmtest.Reply{Empty: true})

	res := f.replicate(t, change.Request{User: "u1"})

	if res.Outcome != change.Synced || res.Attempts != 3 {
		t.Fatalf("result %+v", res)
	}
	fs := f.notes.all()
	if len(fs) != 2 || fs[0].ExitCode != 75 || fs[0].Class != "tempfail" || fs[0].Attempt != 1 || fs[0].RetryBy != change.RetryBySync ||
		fs[0].RetryAt.IsZero() || !fs[0].Retryable || fs[0].MaxAttempts != fast.MaxAttempts || fs[1].Class != "transport" || fs[1].Attempt != 2 {
		t.Errorf("failures %+v", fs)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if st.Failed || st.ConsecutiveFailures != 0 || st.LastExitCode != 75 && st.LastFailureClass != "transport" {
		t.Errorf("status %+v", st)
	}
	if got := counter(t, f, metrics.SyncDsyncs, "outcome", "tempfail", "priority", "high"); got != 1 {
		t.Errorf("dsyncs{tempfail,high} = %v", got)
	}
}

func TestReplicate_ExitCode2RunsAgainWithTheOldState(t *testing.T) {
	f := newFixture(t, fast)
	f.replicate(t, change.Request{User: "u1"})
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 2})

	res := f.replicate(t, change.Request{User: "u1"})

	calls := f.tracks.CallsOf("u1")
	if res.Outcome != change.Synced || len(calls) != 3 || calls[1].State != "state-mail-a-1" || calls[2].State != "state-mail-a-1" {
		t.Fatalf("result %+v calls %+v", res, calls)
	}
}

// stateUnusable answers as dsync does with a state that no longer works:
// code to every incremental sync, success to a full one. dsync answers 2
// when the state no longer fits the destination (a replica rebuilt
// empty: e2e TestReplicaWiped), and 75 when a folder a race brought back
// on one side left the state unusable ("retry with a full sync" in the
// log; e2e BenchmarkSoak).
func stateUnusable(code int) func(doveadmtest.Call) doveadmtest.Reply {
	return func(c doveadmtest.Call) doveadmtest.Reply {
		if c.Full {
			return doveadmtest.Reply{}
		}
		return doveadmtest.Reply{ExitCode: code}
	}
}

// staleState: exit code 2 to every incremental sync.
var staleState = stateUnusable(2)

// TestReplicate_UnusableStateRunsAFullSync: the second 2, or 75, in a row
// makes the rerun a full sync, which ends it. Before, with 75, the user
// failed every attempt and every sweep's retry until its periodic full
// sync.
func TestReplicate_UnusableStateRunsAFullSync(t *testing.T) {
	for _, code := range []int{2, 75} {
		t.Run(fmt.Sprintf("exit code %d", code), func(t *testing.T) {
			f := newFixture(t, fast)
			f.replicate(t, change.Request{User: "u1"}) // a state to start from
			f.a.Respond = stateUnusable(code)

			res := f.replicate(t, change.Request{User: "u1"})

			calls := f.tracks.CallsOf("u1")[1:]
			if len(calls) != 3 || calls[0].Full || calls[1].Full || !calls[2].Full || calls[1].State != "state-mail-a-1" {
				t.Fatalf("calls %+v: want two incremental syncs with the old state, then a full one", calls)
			}
			if res.Outcome != change.Synced || !res.Full || res.Attempts != 3 {
				t.Errorf("result %+v: want synced by the full attempt", res)
			}
		})
	}
}

// TestReplicate_ExitCode2NotInARowStaysIncremental: a 2, another
// failure, then a 2 again is no stale state; the reruns keep the state.
func TestReplicate_ExitCode2NotInARowStaysIncremental(t *testing.T) {
	f := newFixture(t, fast)
	f.replicate(t, change.Request{User: "u1"}) // a state to start from
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 2}, doveadmtest.Reply{ExitCode: 75}, doveadmtest.Reply{ExitCode: 2})

	res := f.replicate(t, change.Request{User: "u1"})

	calls := f.tracks.CallsOf("u1")[1:]
	if len(calls) != 4 {
		t.Fatalf("calls %+v: want 4", calls)
	}
	for i, c := range calls {
		if c.Full {
			t.Errorf("attempt %d was a full sync: %+v", i+1, calls)
		}
	}
	if res.Outcome != change.Synced {
		t.Errorf("result %+v: want synced", res)
	}
}

// TestReplicate_ExitCode2TwiceWithNoAttemptLeftAsksForAFullSync: with
// --max-attempts 2 the second 2 ends the round before its full rerun;
// the full sync stays asked for, and the user's next dsync, the sweep's
// retry, is full. Else every retry would answer 2 twice again.
func TestReplicate_ExitCode2TwiceWithNoAttemptLeftAsksForAFullSync(t *testing.T) {
	o := fast
	o.MaxAttempts = 2
	f := newFixture(t, o)
	f.replicate(t, change.Request{User: "u1"}) // a state to start from
	f.a.Respond = staleState
	if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Failed || res.Attempts != 2 {
		t.Fatalf("result %+v: want failed after two attempts", res)
	}

	res := f.replicate(t, change.Request{User: "u1"})

	calls := f.tracks.CallsOf("u1")
	if last := calls[len(calls)-1]; len(calls) != 4 || !last.Full {
		t.Fatalf("calls %+v: want the retry's dsync a full one", calls)
	}
	if res.Outcome != change.Synced || !res.Full {
		t.Errorf("result %+v: want synced by a full dsync", res)
	}
}

// TestReplicate_ExitCode75FromADownReplicaKeepsTheState: a replica that is
// down answers 75 to the full rerun too; the retries go on with the
// state, and the sweep's retry is incremental: an outage does not give
// every user a full sync.
func TestReplicate_ExitCode75FromADownReplicaKeepsTheState(t *testing.T) {
	f := newFixture(t, fast)
	f.replicate(t, change.Request{User: "u1"}) // a state to start from
	f.a.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{ExitCode: 75} }

	if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Failed || res.Attempts != 4 {
		t.Fatalf("result %+v: want failed after 4 attempts", res)
	}
	calls := f.tracks.CallsOf("u1")[1:]
	want := []bool{false, false, true, false}
	for i, c := range calls {
		if i >= len(want) || c.Full != want[i] {
			t.Fatalf("calls %+v: want incremental, incremental, full, incremental", calls)
		}
	}
	f.a.Respond = nil // the replica is back
	res := f.replicate(t, change.Request{User: "u1"})
	calls = f.tracks.CallsOf("u1")
	if last := calls[len(calls)-1]; last.Full || last.State != "state-mail-a-1" {
		t.Fatalf("the retry after the outage: %+v; want an incremental sync with the state", last)
	}
	if res.Outcome != change.Synced {
		t.Errorf("result %+v: want synced", res)
	}
}

// TestReplicate_ExitCode75WithTwoAttemptsRunsAFullSync: with
// --max-attempts 2 the last attempt, after a first 75, is the full one.
func TestReplicate_ExitCode75WithTwoAttemptsRunsAFullSync(t *testing.T) {
	o := fast
	o.MaxAttempts = 2
	f := newFixture(t, o)
	f.replicate(t, change.Request{User: "u1"}) // a state to start from
	f.a.Respond = stateUnusable(75)

	res := f.replicate(t, change.Request{User: "u1"})

	calls := f.tracks.CallsOf("u1")[1:]
	if len(calls) != 2 || calls[0].Full || !calls[1].Full {
		t.Fatalf("calls %+v: want an incremental sync, then a full one", calls)
	}
	if res.Outcome != change.Synced || !res.Full {
		t.Errorf("result %+v: want synced by the full attempt", res)
	}
}

// TestReplicate_ExitCode75AttemptsByMaxAttempts: with a replica that
// answers 75 to everything, the round's one full attempt comes after the
// second 75, or after the first when the next attempt is the last, and
// the attempts after it are incremental again. With --max-attempts 1
// there is no next attempt, and none is full.
func TestReplicate_ExitCode75AttemptsByMaxAttempts(t *testing.T) {
	for _, tc := range []struct {
		attempts int
		full     []int // the full attempts, from 1
	}{{1, nil}, {2, []int{2}}, {3, []int{3}}, {4, []int{3}}, {20, []int{3}}} {
		t.Run(fmt.Sprint(tc.attempts), func(t *testing.T) {
			o := fast
			o.MaxAttempts = tc.attempts
			f := newFixture(t, o)
			f.replicate(t, change.Request{User: "u1"}) // a state to start from
			f.a.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{ExitCode: 75} }
			if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Failed || res.Attempts != tc.attempts {
				t.Fatalf("result %+v: want failed after %d attempts", res, tc.attempts)
			}
			var full []int
			for i, c := range f.tracks.CallsOf("u1")[1:] {
				if c.Full {
					full = append(full, i+1)
				}
			}
			if fmt.Sprint(full) != fmt.Sprint(tc.full) {
				t.Errorf("full attempts %v, want %v", full, tc.full)
			}
		})
	}
}

// TestReplicate_ExitCode75KeepsAFullSyncAskedForDuringTheRetries: a full
// sync asked for while the user answers 75 (a replica down) is never put
// back to incremental by the round's full attempt answering 75 too: the
// attempts after it stay full, and so does the sweep's retry.
func TestReplicate_ExitCode75KeepsAFullSyncAskedForDuringTheRetries(t *testing.T) {
	for _, at := range []int{2, 3} { // during the second incremental attempt, or the full one
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			f := newFixture(t, fast)
			f.replicate(t, change.Request{User: "u1"}) // a state to start from
			f.a.Respond = func(doveadmtest.Call) doveadmtest.Reply { return doveadmtest.Reply{ExitCode: 75} }
			f.a.OnStart = func(doveadmtest.Call) {
				if len(f.tracks.CallsOf("u1")) == at {
					if res := f.replicate(t, change.Request{User: "u1", Full: true}); res.Outcome != change.Coalesced {
						t.Errorf("full request during attempt %d: %+v, want coalesced", at, res)
					}
				}
			}
			if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Failed || res.Attempts != 4 {
				t.Fatalf("result %+v: want failed after 4 attempts", res)
			}
			f.a.Respond, f.a.OnStart = nil, nil
			if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Synced || !res.Full {
				t.Errorf("the sweep's retry: %+v, want a full sync", res)
			}
			calls := f.tracks.CallsOf("u1")[1:]
			for i, c := range calls {
				if want := i+1 >= 3; c.Full != want {
					t.Fatalf("attempt %d full %v; want incremental, incremental, then full: %+v", i+1, c.Full, calls)
				}
			}
		})
	}
}

func TestReplicate_ExitCode65EscalatesOnceToFullSync(t *testing.T) {
	f := newFixture(t, fast)
	f.replicate(t, change.Request{User: "u1"}) // a state to start from
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 65}, doveadmtest.Reply{ExitCode: 65})

	res := f.replicate(t, change.Request{User: "u1"})

	calls := f.tracks.CallsOf("u1")[1:]
	if len(calls) != 2 || calls[0].Full || !calls[1].Full {
		t.Fatalf("calls %+v: want an incremental then one full sync", calls)
	}
	if res.Outcome != change.Failed || res.Failure.ExitCode != 65 || !res.Failure.Full || res.Failure.RetryBy != change.RetryBySweep {
		t.Errorf("result %+v failure %+v", res, res.Failure)
	}
	// Two attempts in all, whatever --max-attempts says: the first
	// failure's event says so, and the last is attempt 2 of 2.
	if fs := f.notes.all(); len(fs) != 1 || fs[0].Attempt != 1 || fs[0].MaxAttempts != 2 {
		t.Errorf("retried failures %+v: want attempt 1 of 2", fs)
	}
	if res.Failure.Attempt != 2 || res.Failure.MaxAttempts != 2 {
		t.Errorf("last failure: attempt %d of %d, want 2 of 2", res.Failure.Attempt, res.Failure.MaxAttempts)
	}
}

func TestReplicate_NotRetried(t *testing.T) {
	for _, tt := range []struct {
		reply   doveadmtest.Reply
		class   string
		retryBy string
		config  bool
	}{
		{doveadmtest.Reply{ExitCode: 67}, "no_user", change.RetryNone, false},
		{doveadmtest.Reply{ExitCode: 77}, "no_permission", change.RetryNone, true},
		{doveadmtest.Reply{ExitCode: 78}, "config_error", change.RetryNone, true},
		{doveadmtest.Reply{Status: 401}, "unauthorized", change.RetryNone, true},
	} {
		t.Run(tt.class, func(t *testing.T) {
			f := newFixture(t, fast)
			f.a.Respond = doveadmtest.Answers(tt.reply)
			at := time.Now().Add(-time.Second)

			res := f.replicate(t, change.Request{User: "u1", Time: at})

			if n := len(f.tracks.CallsOf("u1")); n != 1 {
				t.Errorf("%d dsyncs, want 1", n)
			}
			if res.Outcome != change.Failed || res.Failure.Class != tt.class || res.Failure.RetryBy != tt.retryBy || res.Failure.Attempt != 1 ||
				res.Failure.MaxAttempts != 1 {
				t.Fatalf("result %+v failure %+v: want attempt 1 of 1", res, res.Failure)
			}
			st, _ := f.st.Status(context.Background(), "u1")
			if tt.class == doveadm.ClassNoUser {
				// A user that no longer exists is dropped, as Dovecot
				// 2.3's replicator dropped it: no sweep tries it again,
				// and no record of it is left.
				if st.Failed || !st.PendingSince.IsZero() || st.InProgress || !st.LastFailure.IsZero() || st.LastFailureClass != "" {
					t.Errorf("status %+v: want no record, neither failed nor pending, no lock", st)
				}
				if n, err := f.rdb.Exists(context.Background(), state.UserKey("u1"), state.StateKey("u1"), state.LockKey("u1")).Result(); err != nil || n != 0 {
					t.Errorf("%d of u1's keys left (%v), want none", n, err)
				}
			} else if !st.Failed || st.PendingSince.UnixMilli() != at.UnixMilli() || st.InProgress {
				t.Errorf("status %+v: want failed, the change still pending, no lock", st)
			}
			loud := strings.Contains(f.logs.String(), "configuration problem")
			if got := counter(t, f, metrics.SyncConfigProblems) > 0; got != tt.config || loud != tt.config {
				t.Errorf("config problem metric %v, logged %v, want %v", got, loud, tt.config)
			}
		})
	}
}

// TestReplicate_NoSuchUserDropsItsState: a user doveadm no longer knows
// loses its dsync state with its marks, as Dovecot 2.3's replicator
// removed it with its state: a user created again under the name starts
// with a full sync, not with the old mailboxes' state.
func TestReplicate_NoSuchUserDropsItsState(t *testing.T) {
	f := newFixture(t, fast)
	f.replicate(t, change.Request{User: "u1"})
	if st, _ := f.st.Status(context.Background(), "u1"); len(st.States) != 1 {
		t.Fatalf("states %v after a success, want one", st.States)
	}
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 67})
	if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Failed {
		t.Fatalf("result %+v, want failed", res)
	}
	if st, _ := f.st.Status(context.Background(), "u1"); len(st.States) != 0 || !st.LastStart.IsZero() {
		t.Fatalf("status %+v: want no record and no dsync state", st)
	}

	f.replicate(t, change.Request{User: "u1"})

	calls := f.tracks.CallsOf("u1")
	if last := calls[len(calls)-1]; !last.Full || last.State != "" {
		t.Errorf("dsync after the user came back %+v: want a full one without state", last)
	}
}

func TestReplicate_BoundedAttempts(t *testing.T) {
	for _, tt := range []struct {
		reply    doveadmtest.Reply
		attempts int
	}{
		{doveadmtest.Reply{ExitCode: 75}, 4},
		{doveadmtest.Reply{Empty: true}, 4},
		{doveadmtest.Reply{ExitCode: 2}, 4},
		{doveadmtest.Reply{ExitCode: 99}, 3},
	} {
		f := newFixture(t, fast)
		f.a.Respond = func(doveadmtest.Call) doveadmtest.Reply { return tt.reply }
		res := f.replicate(t, change.Request{User: "u1"})
		if n := len(f.tracks.CallsOf("u1")); n != tt.attempts || res.Outcome != change.Failed || res.Failure.RetryBy != change.RetryBySweep {
			t.Errorf("%+v: %d attempts, result %+v; want %d then failed for the sweep", tt.reply, n, res, tt.attempts)
		}
		if fs := f.notes.all(); len(fs) != tt.attempts-1 {
			t.Errorf("%+v: %d intermediate failures reported, want %d", tt.reply, len(fs), tt.attempts-1)
		}
	}
}

func TestReplicate_PasswordNeverInFailuresOrLogs(t *testing.T) {
	f := newFixture(t, fast)
	f.a.Password = "another-password" // so ours is rejected
	res := f.replicate(t, change.Request{User: "u1"})
	if res.Outcome != change.Failed {
		t.Fatalf("%+v", res)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	for where, s := range map[string]string{"failure": fmt.Sprintf("%+v", *res.Failure), "logs": f.logs.String(), "status": st.LastError} {
		if strings.Contains(s, doveadmtest.Password) {
			t.Errorf("%s shows the password: %s", where, s)
		}
	}
}

func TestReplicate_ExcludedAndHostileUsersNeverSynced(t *testing.T) {
	f := newFixture(t, fast)
	if err := f.st.Exclude(context.Background(), "excluded"); err != nil {
		t.Fatal(err)
	}
	if res := f.replicate(t, change.Request{User: "excluded"}); res.Outcome != change.Excluded {
		t.Errorf("%+v", res)
	}
	for _, u := range []string{"-A", "u*", "u1\nforged"} {
		if _, err := f.r.Replicate(context.Background(), change.Request{User: u}); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
	if n := len(f.tracks.Calls()); n != 0 {
		t.Errorf("%d dsyncs", n)
	}
}

// A user excluded while its failed attempt waits for its retry is not
// tried again: the outcome is Excluded, the one failure reported stays
// the last event (docs/events.md, retry_by), the lock is released, and
// the user is left neither pending nor failed, as Begin leaves an
// excluded user.
func TestReplicate_ExcludedDuringTheRetryWaitIsNotRetried(t *testing.T) {
	f := newFixture(t, fast)
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75}, doveadmtest.Reply{})
	f.notes.onFail = func() {
		if err := f.st.Exclude(context.Background(), "u1"); err != nil {
			t.Error(err)
		}
	}
	res := f.replicate(t, change.Request{User: "u1"})
	if res.Outcome != change.Excluded || res.Attempts != 1 {
		t.Fatalf("result %+v, want excluded after 1 attempt", res)
	}
	if n := len(f.tracks.Calls()); n != 1 {
		t.Errorf("%d dsyncs, want 1: no retry for an excluded user", n)
	}
	if fs := f.notes.all(); len(fs) != 1 || fs[0].RetryBy != change.RetryBySync {
		t.Errorf("failures reported %+v, want the one attempt, with a retry by sync", fs)
	}
	st, err := f.st.Status(context.Background(), "u1")
	if err != nil {
		t.Fatal(err)
	}
	if st.InProgress || st.Failed || !st.PendingSince.IsZero() || !st.Excluded {
		t.Errorf("status %+v: want excluded, not in progress, failed or pending", st)
	}
	if !strings.Contains(f.logs.String(), "user excluded during its dsync; not retried") {
		t.Errorf("log lacks the exclusion:\n%s", f.logs.String())
	}
}

func TestReplicate_RedisDownIsUnavailable(t *testing.T) {
	f := newFixture(t, fast)
	f.mr.Close()
	_, err := f.r.Replicate(context.Background(), change.Request{User: "u1"})
	if !errors.Is(err, ErrUnavailable) || len(f.tracks.Calls()) != 0 {
		t.Fatalf("err %v, %d dsyncs", err, len(f.tracks.Calls()))
	}
}

func TestReplicate_CancelledMidDsyncReleasesLockAndLeavesPending(t *testing.T) {
	f := newFixture(t, fast)
	f.a.Latency = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	f.a.OnStart = func(doveadmtest.Call) { cancel() }

	_, err := f.r.Replicate(ctx, change.Request{User: "u1", Priority: change.Low})

	if !errors.Is(err, ErrAborted) {
		t.Fatalf("err %v", err)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if st.InProgress || st.PendingSince.IsZero() {
		t.Errorf("status %+v: want the lock released and the change pending", st)
	}
	if fs := f.notes.all(); len(fs) != 1 || fs[0].RetryBy != change.RetryByBroker {
		t.Errorf("failures %+v", fs)
	}
}

// TestReplicate_StoppedDuringTheBackoff: a stop while a failed attempt
// waits for its retry releases the lock and leaves the change pending,
// and reports nothing more: that attempt's failure was counted and
// reported (retry_by sync) when it failed. Before, the stop counted it a
// second time in the user's status and sent a second replication.failed
// for it.
func TestReplicate_StoppedDuringTheBackoff(t *testing.T) {
	o := fast
	o.Backoff, o.MaxBackoff = 10*time.Second, 10*time.Second
	f := newFixture(t, o)
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 75})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.notes.onFail = cancel

	_, err := f.r.Replicate(ctx, change.Request{User: "u1"})

	if !errors.Is(err, ErrAborted) {
		t.Fatalf("err %v, want aborted", err)
	}
	if n := len(f.tracks.CallsOf("u1")); n != 1 {
		t.Errorf("%d dsyncs, want the one that failed", n)
	}
	if fs := f.notes.all(); len(fs) != 1 || fs[0].RetryBy != change.RetryBySync {
		t.Errorf("failures reported %+v: want the attempt's, once", fs)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if st.InProgress || st.PendingSince.IsZero() || st.ConsecutiveFailures != 1 || st.LastExitCode != 75 {
		t.Errorf("status %+v: want the lock released, the change pending, one failure counted", st)
	}
}

func TestReplicate_LockLostStopsTheDsync(t *testing.T) {
	f := newFixture(t, fast)
	release := make(chan struct{})
	f.a.OnStart = func(doveadmtest.Call) {
		// Someone else's lock replaces ours (as after an expiry).
		f.mr.Set(state.LockKey("u1"), "someone-else")
		<-release
	}
	f.a.Latency = 3 * time.Second
	done := make(chan error)
	go func() {
		_, err := f.r.Replicate(context.Background(), change.Request{User: "u1"})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("dsync not cut off after the lock was lost")
	}
	close(release)
	if !errors.Is(err, ErrAborted) || !errors.Is(err, doveadm.ErrLockLost) {
		t.Fatalf("err %v", err)
	}
	if v, _ := f.mr.Get(state.LockKey("u1")); v != "someone-else" {
		t.Errorf("the other owner's lock was touched: %q", v)
	}
}

func TestReplicate_ChangesDuringDsyncCauseOneRerun(t *testing.T) {
	f := newFixture(t, fast)
	started, releaseOnce := f.hold(t, true)
	done := make(chan change.Result, 1)
	go func() { done <- f.replicate(t, change.Request{User: "u1"}) }()
	<-started
	for i := 0; i < 5; i++ {
		if res := f.replicate(t, change.Request{User: "u1", Host: "mail-b"}); res.Outcome != change.Coalesced {
			t.Fatalf("change during dsync: %+v", res)
		}
	}
	releaseOnce()
	res := <-done
	if n := len(f.tracks.CallsOf("u1")); n != 2 || res.Coalesced != 6 || res.Outcome != change.Synced {
		t.Fatalf("%d dsyncs, result %+v: want 2 dsyncs covering 6 changes", n, res)
	}
	if got := testutil.ToFloat64(f.r.m.reruns); got != 1 {
		t.Errorf("reruns %v", got)
	}
	if got := counter(t, f, metrics.SyncLockContention); got != 5 {
		t.Errorf("contention %v", got)
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if !st.PendingSince.IsZero() || st.InProgress {
		t.Errorf("status %+v", st)
	}
}

// TestReplicate_NoSuchUserKeepsAChangeFromDuringTheDsync: a dsync whose
// source answers "no such user" (exit code 67; the user moved to another
// host, docs/operations.md) covers no change that arrived while it ran:
// that change stays pending, and the user's record with it, for the next
// event or the sweep. The change is marked in Redis (unstamped, or from
// another host) or merged into the running dsync in-process (stamped by
// ingest, from the dsync's own host).
func TestReplicate_NoSuchUserKeepsAChangeFromDuringTheDsync(t *testing.T) {
	for _, tc := range []struct {
		stamped bool
		host    string
	}{{false, "mail-b"}, {true, "mail-b"}, {true, "mail-a"}} {
		stamped, inProcess := tc.stamped, tc.stamped && tc.host == "mail-a"
		t.Run(fmt.Sprintf("stamped %t from %s", stamped, tc.host), func(t *testing.T) {
			f := newFixture(t, fast)
			started, releaseOnce := f.hold(t, false)
			f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 67})
			done := make(chan change.Result, 1)
			go func() { done <- f.replicate(t, change.Request{User: "u1", Host: "mail-a"}) }()
			<-started
			during := change.Request{User: "u1", Host: tc.host}
			if stamped {
				during.Observed = time.Now().Add(time.Second)
			}
			if res := f.replicate(t, during); res.Outcome != change.Coalesced {
				t.Fatalf("change during dsync: %+v", res)
			}
			if busy := counter(t, f, metrics.SyncLockContention); (busy == 0) != inProcess {
				t.Fatalf("lock contention %v: want the change marked in Redis unless stamped and from mail-a", busy)
			}
			releaseOnce()
			if res := <-done; res.Outcome != change.Failed || res.Failure == nil || res.Failure.Class != doveadm.ClassNoUser {
				t.Fatalf("result %+v, want failed: no such user", res)
			}
			if st, _ := f.st.Status(context.Background(), "u1"); st.PendingSince.IsZero() || st.InProgress {
				t.Errorf("status %+v: want the change from during the dsync pending, the lock released", st)
			}
		})
	}
}

// TestReplicate_ChangesLeftAfterMaxRoundsAreAskedForAgain: with changes
// arriving during every dsync, the owner stops after --max-rounds and hands
// the user back to the Broker (the lane's other work first), timed after
// the last round, so the changes of that round do not wait for the sweep.
// When that send fails, they stay pending for the sweep.
func TestReplicate_ChangesLeftAfterMaxRoundsAreAskedForAgain(t *testing.T) {
	for _, sendFails := range []bool{false, true} {
		t.Run(fmt.Sprintf("send fails %t", sendFails), func(t *testing.T) {
			o := fast
			o.MaxRounds = 2
			f := newFixture(t, o)
			if sendFails {
				f.notes.askErr = errors.New("broker full")
			}
			started := make(chan struct{}, 10)
			release := make(chan struct{})
			f.a.OnStart = func(doveadmtest.Call) {
				started <- struct{}{}
				<-release
			}
			done := make(chan change.Result)
			go func() { done <- f.replicate(t, change.Request{User: "u1", Priority: change.Low, Host: "mail-a"}) }()
			for range o.MaxRounds {
				<-started
				// A change during each round: each asks for one more.
				if res := f.replicate(t, change.Request{User: "u1", Host: "mail-a"}); res.Outcome != change.Coalesced {
					t.Fatalf("change during dsync: %+v", res)
				}
				release <- struct{}{}
			}
			res := <-done
			if n := len(f.tracks.CallsOf("u1")); n != o.MaxRounds || res.Outcome != change.Synced {
				t.Fatalf("%d dsyncs, result %+v: want %d", n, res, o.MaxRounds)
			}
			f.notes.mu.Lock()
			asked := append([]asked(nil), f.notes.asked...)
			f.notes.mu.Unlock()
			if len(asked) != 1 || asked[0].req.User != "u1" || asked[0].req.Priority != change.Low || asked[0].req.Host != "mail-a" {
				t.Fatalf("asked again %+v, want u1 once, low, from mail-a", asked)
			}
			if asked[0].at.Before(res.Start) {
				t.Errorf("asked again at %v, before the last round's start %v", asked[0].at, res.Start)
			}
			result := "sent"
			if sendFails {
				result = "failed"
			}
			if got := counter(t, f, metrics.SyncAskedAgain, "result", result); got != 1 {
				t.Errorf("asked again %s: %v", result, got)
			}
			// Either way the change stays pending in Redis until a dsync
			// that started after it succeeds.
			if st, _ := f.st.Status(context.Background(), "u1"); st.PendingSince.IsZero() {
				t.Errorf("the left change is not pending: %+v", st)
			}
			// The request asked for again runs that dsync.
			close(release)
			if res := f.replicate(t, change.Request{User: "u1", Time: asked[0].at, Priority: change.Low}); res.Outcome != change.Synced {
				t.Errorf("the request asked for again: %+v", res)
			}
			if st, _ := f.st.Status(context.Background(), "u1"); !st.PendingSince.IsZero() {
				t.Errorf("still pending after it: %+v", st)
			}
		})
	}
}

// TestReplicate_DeletedUnderUsRunsOnceMore: dsync answers 68 when a folder
// is deleted while it syncs it; one more run, after the first retry's
// backoff (the destination's side of the failed dsync may still be
// writing), succeeds, and a second 68 is reported, leaving the user to the
// sweep.
func TestReplicate_DeletedUnderUsRunsOnceMore(t *testing.T) {
	f := newFixture(t, fast)
	var waits []time.Duration
	f.r.sleep = func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		return nil
	}
	// The user's first dsync is already full; 68 still gets its rerun.
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 68})
	if res := f.replicate(t, change.Request{User: "u1", Time: time.Now()}); res.Outcome != change.Synced || res.Attempts != 2 {
		t.Errorf("68 then success: %+v, want synced after 2 attempts", res)
	}
	if len(waits) != 1 || waits[0] < fast.Backoff*8/10 {
		t.Errorf("waits before the full rerun: %v, want one of about %v", waits, fast.Backoff)
	}

	g := newFixture(t, fast)
	g.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 68}, doveadmtest.Reply{ExitCode: 68}, doveadmtest.Reply{ExitCode: 68})
	res := g.replicate(t, change.Request{User: "u2", Time: time.Now()})
	if n := len(g.tracks.CallsOf("u2")); n != 2 {
		t.Errorf("%d dsyncs, want 2", n)
	}
	if res.Outcome != change.Failed || res.Failure.Class != "not_found" || res.Failure.RetryBy != change.RetryBySweep {
		t.Errorf("68 twice: %+v failure %+v, want failed and left to the sweep", res, res.Failure)
	}
}

// TestReplicate_EachRoundGetsItsFullRerun: the full rerun after exit code
// 68 is given once per round, so a round started for a change that
// arrived during the first round's rerun gets its own.
func TestReplicate_EachRoundGetsItsFullRerun(t *testing.T) {
	f := newFixture(t, fast)
	f.r.sleep = func(context.Context, time.Duration) error { return nil }
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{ExitCode: 68}, doveadmtest.Reply{}, doveadmtest.Reply{ExitCode: 68})
	rerun, release := make(chan struct{}, 1), make(chan struct{})
	f.a.OnStart = func(doveadmtest.Call) {
		if len(f.tracks.Calls()) == 1 { // the first round's full rerun
			rerun <- struct{}{}
			<-release
		}
	}
	done := make(chan change.Result)
	go func() { done <- f.replicate(t, change.Request{User: "u1"}) }()
	<-rerun
	if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Coalesced {
		t.Fatalf("change during the rerun: %+v", res)
	}
	close(release)
	res := <-done
	calls := f.tracks.CallsOf("u1")
	if res.Outcome != change.Synced || len(calls) != 4 || !calls[1].Full || calls[2].Full || !calls[3].Full {
		t.Fatalf("result %+v, calls %+v: want 68, its full rerun, then a second round: 68 with the new state, its own full rerun", res, calls)
	}
}

// TestReplicate_AFullRequestOutlivesAnAbortedAttempt: a full sync asked for
// while the user's dsync runs is the owner's next attempt; if that attempt
// is cut off (its lock lost), the next dsync of the user is still a full
// one: the request was acknowledged. (The event that ran both answers the
// first one's success, and the user is asked for again.)
func TestReplicate_AFullRequestOutlivesAnAbortedAttempt(t *testing.T) {
	f := newFixture(t, fast)
	started, release := make(chan struct{}, 10), make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	f.a.OnStart = func(c doveadmtest.Call) {
		switch len(f.tracks.Calls()) {
		case 0: // the first dsync waits for the full request
			started <- struct{}{}
			<-release
		case 1: // the full rerun loses its lock
			f.mr.Set(state.LockKey("u1"), "someone-else")
			f.mr.SetTTL(state.LockKey("u1"), 50*time.Millisecond)
		}
	}
	f.a.Latency = 300 * time.Millisecond
	done := make(chan error)
	go func() {
		res, err := f.r.Replicate(context.Background(), change.Request{User: "u1", Priority: change.High})
		if err == nil && res.Outcome != change.Synced {
			err = fmt.Errorf("outcome %q", res.Outcome)
		}
		done <- err
	}()
	<-started
	if res := f.replicate(t, change.Request{User: "u1", Full: true}); res.Outcome != change.Coalesced {
		t.Fatalf("full request during the dsync: %+v", res)
	}
	free()
	if err := <-done; err != nil {
		t.Fatalf("the event whose full rerun was cut: %v, want the first dsync's success", err)
	}
	if len(f.notes.asked) != 1 {
		t.Errorf("asked again %d times, want once", len(f.notes.asked))
	}
	// The cut rerun goes on in the fake (as in Dovecot) until its
	// latency is over: the next dsync comes after it, as one would after
	// the lock's new owner.
	for deadline := time.Now().Add(5 * time.Second); len(f.tracks.CallsOf("u1")) < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the cut rerun never ended in the fake")
		}
	}
	f.mr.Del(state.LockKey("u1"))
	if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Synced || !res.Full {
		t.Errorf("next dsync %+v, want a full one", res)
	}
	calls := f.tracks.CallsOf("u1")
	if len(calls) != 3 || !calls[1].Full || !calls[2].Full {
		t.Errorf("dsyncs %+v: want the rerun and the next one full", calls)
	}
}

// TestMetrics_EveryOutcomeFromTheStart: the dsync counter has every
// outcome of both lanes at 0 before the first dsync, so that the error
// ratio's increase() counts an instance's first failure of a class.
func TestMetrics_EveryOutcomeFromTheStart(t *testing.T) {
	m := newReplMetrics(prometheus.NewRegistry())
	want := map[string]bool{"success": true, "changed": true, "tempfail": true, "transport": true, "lost_lock": true, "tls": true}
	for _, class := range doveadm.Classes() {
		delete(want, class)
	}
	if len(want) > 0 {
		t.Errorf("doveadm.Classes() lacks %v", want)
	}
	if n := testutil.CollectAndCount(m.dsyncs); n != 2*len(doveadm.Classes()) {
		t.Errorf("%d dsync series before any dsync, want %d (every class, both lanes)", n, 2*len(doveadm.Classes()))
	}
}

// TestReplicate_StateTooLargeIsAFullSync: a user whose stored state the
// transport cannot pass (Dovecot 2.4's doveadm HTTP API refuses a JSON
// string over 32 KiB, some 550 mailboxes) is replicated by a full sync
// without it, recorded as full, counted and logged, and not failed.
func TestReplicate_StateTooLargeIsAFullSync(t *testing.T) {
	f := newFixture(t, fast)
	big := strings.Repeat("A", 40_000)
	f.a.Respond = func(c doveadmtest.Call) doveadmtest.Reply {
		if len(c.State) > 32768 {
			return doveadmtest.Reply{Status: 400, Body: "JSON parse error: Excessive string size (> 32768)"}
		}
		return doveadmtest.Reply{State: big}
	}
	f.replicate(t, change.Request{User: "u1"}) // the first, full, returns the large state
	res := f.replicate(t, change.Request{User: "u1"})

	if res.Outcome != change.Synced || !res.Full || res.Attempts != 1 {
		t.Fatalf("result %+v: want synced by one full attempt", res)
	}
	calls := f.tracks.CallsOf("u1")[1:]
	if len(calls) != 2 || calls[0].State != big || calls[1].State != "" || !calls[1].Full {
		t.Fatalf("calls %+v: want the state refused, then a full sync without it", calls)
	}
	if got := counter(t, f, metrics.SyncStatesLeftOut); got != 1 {
		t.Errorf("states left out counted %v, want 1", got)
	}
	if !strings.Contains(f.logs.String(), "dsync state too large for doveadm") || !strings.Contains(f.logs.String(), "state_bytes=40000") {
		t.Errorf("no warning naming the state's size:\n%s", f.logs.String())
	}
	st, _ := f.st.Status(context.Background(), "u1")
	if st.Failed || !st.LastFull {
		t.Errorf("status %+v: want not failed, the last dsync full", st)
	}
	if got := counter(t, f, metrics.SyncDsyncs, "outcome", "protocol"); got != 0 {
		t.Errorf("the refused state counted as a protocol failure %v times", got)
	}
}

// TestReplicate_AStateTooLargeToKeep: a dsync whose state is too large to
// keep succeeds, the user's older state is deleted rather than kept, and
// the next dsync is a full one: an older state would have that dsync
// compare from a point before the one that succeeded.
func TestReplicate_AStateTooLargeToKeep(t *testing.T) {
	f := newFixture(t, fast)
	f.replicate(t, change.Request{User: "u1"}) // a state to start from
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{State: strings.Repeat("A", 2<<20)}, doveadmtest.Reply{})

	if res := f.replicate(t, change.Request{User: "u1"}); res.Outcome != change.Synced {
		t.Fatalf("the dsync answering a large state: %+v", res)
	}
	if got := counter(t, f, metrics.SyncStatesLeftOut); got != 1 {
		t.Errorf("states left out: %v, want 1", got)
	}
	res := f.replicate(t, change.Request{User: "u1"})
	calls := f.tracks.CallsOf("u1")
	if res.Outcome != change.Synced || !res.Full || len(calls) != 3 || calls[2].State != "" || !calls[2].Full {
		t.Errorf("next dsync %+v, calls %+v: want a full one without a state", res, calls)
	}
}

// TestReplicate_GoneInTheRerunKeepsAnotherHostsChange: a change seen on
// mail-b while mail-a's dsync runs (in Redis or stamped, which would merge
// in-process from mail-a) makes mail-a's dsync run once more; that rerun
// answers "no such user" (the user moved to mail-b). The change from
// mail-b was acknowledged and is not covered: it stays pending, from
// mail-b, for the next event or the sweep.
func TestReplicate_GoneInTheRerunKeepsAnotherHostsChange(t *testing.T) {
	for _, stamped := range []bool{false, true} {
		t.Run(fmt.Sprintf("stamped=%v", stamped), func(t *testing.T) {
			f := newFixture(t, fast)
			started, release := make(chan struct{}), make(chan struct{})
			var first sync.Once
			f.a.OnStart = func(doveadmtest.Call) {
				first.Do(func() {
					close(started)
					<-release
				})
			}
			f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{}, doveadmtest.Reply{ExitCode: 67})
			done := make(chan change.Result, 1)
			go func() { done <- f.replicate(t, change.Request{User: "u1", Host: "mail-a"}) }()
			<-started
			during := change.Request{User: "u1", Host: "mail-b"}
			if stamped {
				now, err := f.st.Now(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				during.Observed = now
			}
			res := f.replicate(t, during)
			close(release)
			<-done
			if res.Outcome != change.Coalesced {
				t.Fatalf("the change from mail-b: %+v, want it merged", res)
			}
			if n := len(f.tracks.CallsOf("u1")); n != 2 {
				t.Fatalf("mail-a ran %d dsyncs, want 2 (the second for the change from mail-b)", n)
			}
			st, err := f.st.Status(context.Background(), "u1")
			if err != nil || st.PendingSince.IsZero() || st.PendingHost != "mail-b" {
				t.Errorf("status %+v, %v: want the change pending from mail-b", st, err)
			}
		})
	}
}

// TestReplicate_RerunAtTheEndOfTheBudget: a change merged while a dsync
// runs asks for another round. With too little of the request's time left
// to run one, the owner does not start it but hands the user back to the
// Broker; a round that starts and is cut off at the deadline is no failure
// either. The answer is the first round's success, which covered the
// request's own change (a redelivery would find it covered and run
// nothing), and the merged change stays pending and is asked for again.
func TestReplicate_RerunAtTheEndOfTheBudget(t *testing.T) {
	for _, started := range []bool{false, true} {
		t.Run(fmt.Sprintf("rerun started %t", started), func(t *testing.T) {
			f := newFixture(t, fast)
			budget := 3 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), budget)
			defer cancel()
			dl, _ := ctx.Deadline()
			first, merged, stop := make(chan struct{}), make(chan struct{}), make(chan struct{})
			t.Cleanup(func() { close(stop) })
			var n atomic.Int32
			f.a.OnStart = func(doveadmtest.Call) {
				if n.Add(1) > 1 {
					<-stop // the rerun outlives the request
					return
				}
				close(first)
				<-merged
				if !started {
					// Less than minAttempt left when the round ends.
					time.Sleep(time.Until(dl) - minAttempt/2)
				}
			}
			type out struct {
				res change.Result
				err error
			}
			done := make(chan out, 1)
			go func() {
				res, err := f.r.Replicate(ctx, change.Request{User: "u1", Host: "mail-a", Priority: change.High})
				done <- out{res, err}
			}()
			<-first
			if res := f.replicate(t, change.Request{User: "u1", Host: "mail-b"}); res.Outcome != change.Coalesced {
				t.Fatalf("the change during the dsync: %+v", res)
			}
			close(merged)
			o := <-done
			if o.err != nil || o.res.Outcome != change.Synced {
				t.Fatalf("answer %+v, %v: want the first round's success", o.res, o.err)
			}
			if got, want := n.Load(), map[bool]int32{false: 1, true: 2}[started]; got != want {
				t.Errorf("%d dsyncs started, want %d", got, want)
			}
			f.notes.mu.Lock()
			asked := append([]asked(nil), f.notes.asked...)
			f.notes.mu.Unlock()
			if len(asked) != 1 || !asked[0].at.After(o.res.Start) {
				t.Errorf("asked again %+v: want once, timed after the first round's start %v", asked, o.res.Start)
			}
			if fs := f.notes.all(); len(fs) != 0 {
				t.Errorf("failures reported: %+v", fs)
			}
			st, err := f.st.Status(context.Background(), "u1")
			if err != nil || st.PendingSince.IsZero() || st.ConsecutiveFailures != 0 || st.InProgress {
				t.Errorf("status %+v, %v: want the merged change pending, no failure, no attempt running", st, err)
			}
		})
	}
}

// A user excluded while the rerun of its request waits for a retry: the
// request's first round succeeded and covered its change, so that success
// stays the answer (its replication.succeeded is sent), not "excluded",
// which dropped the report of a dsync that ran and succeeded.
func TestReplicate_ExcludedAfterASuccessfulRoundKeepsItsSuccess(t *testing.T) {
	f := newFixture(t, fast)
	started, releaseOnce := f.hold(t, true)
	// The first round succeeds; its rerun fails with 75 and waits.
	f.a.Respond = doveadmtest.Answers(doveadmtest.Reply{}, doveadmtest.Reply{ExitCode: 75}, doveadmtest.Reply{})
	f.notes.onFail = func() {
		if err := f.st.Exclude(context.Background(), "u1"); err != nil {
			t.Error(err)
		}
	}
	done := make(chan change.Result, 1)
	go func() { done <- f.replicate(t, change.Request{User: "u1"}) }()
	<-started
	if res := f.replicate(t, change.Request{User: "u1", Host: "mail-b"}); res.Outcome != change.Coalesced {
		t.Fatalf("change during the first dsync: %+v", res)
	}
	releaseOnce()
	res := <-done
	if res.Outcome != change.Synced || res.Start.IsZero() || res.Attempts != 2 {
		t.Fatalf("result %+v; want the first round's success, after 2 attempts", res)
	}
	if n := len(f.tracks.CallsOf("u1")); n != 2 {
		t.Errorf("%d dsyncs; want 2: no retry for an excluded user", n)
	}
}
