package replicator_test

// The invariants of docs/sync.md (and ARCHITECTURE.md), each a test against
// a real redis-server: several sync instances, each with its own Redis
// client, share it as separate pods would.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/replicator"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// cluster is a real Redis, two fake Dovecot hosts (an active-active pair)
// and n sync instances.
type cluster struct {
	redis     *redistest.Server
	a, b      *doveadmtest.Server
	tracker   *doveadmtest.Tracker
	instances []*instance
	st        *state.Store
}

type instance struct {
	r   *replicator.Replicator
	rdb *redis.Client
}

func newCluster(t *testing.T, n int, o replicator.Options) *cluster {
	t.Helper()
	srv := redistest.Start(t)
	tr := doveadmtest.NewTracker(t)
	c := &cluster{redis: srv, tracker: tr, a: doveadmtest.NewServer(t, "mail-a", tr), b: doveadmtest.NewServer(t, "mail-b", tr)}
	c.st = state.New(srv.Client(t))
	hosts := doveadm.NewHostMap(
		doveadm.Endpoint{Name: "mail-a", URL: c.a.APIURL(), Password: doveadmtest.Password, Destination: "tcp:mail-b:12345"},
		doveadm.Endpoint{Name: "mail-b", URL: c.b.APIURL(), Password: doveadmtest.Password, Destination: "tcp:mail-a:12345"},
	)
	tp := doveadm.NewHTTP(nil, 10*time.Second)
	for i := 0; i < n; i++ {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
		t.Cleanup(func() { rdb.Close() })
		o := o
		o.Owner = fmt.Sprintf("sync-%d", i)
		r := replicator.New(o, state.New(rdb), tp, hosts, nil, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		c.instances = append(c.instances, &instance{r: r, rdb: rdb})
	}
	return c
}

var opts = replicator.Options{LockTTL: time.Second, ClockSkew: 5 * time.Millisecond, MaxAttempts: 4,
	Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, RunAgainDelay: time.Millisecond, MaxRounds: 100,
	CleanupTimeout: time.Second}

func succeeded(c doveadmtest.Call) bool {
	r := c.Reply
	return r.ExitCode == 0 && !r.Empty && r.Status == 0 && r.ErrorType == ""
}

// Invariant 2: never two dsyncs of one user at once, across instances and
// both directions of an active-active pair. The fake doveadm fails the test
// on any overlap.
func TestInvariantRealRedis_OneDsyncPerUserAcrossInstances(t *testing.T) {
	c := newCluster(t, 4, opts)
	for _, s := range []*doveadmtest.Server{c.a, c.b} {
		s.Respond = func(doveadmtest.Call) doveadmtest.Reply {
			return doveadmtest.Reply{Delay: time.Duration(rand.IntN(3000)) * time.Microsecond}
		}
	}
	users := []string{"u1", "u2", "u3", "u4", "u5"}
	var wg sync.WaitGroup
	var outcomes sync.Map
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				in := c.instances[rand.IntN(len(c.instances))]
				host := []string{"mail-a", "mail-b"}[rand.IntN(2)]
				res, err := in.r.Replicate(context.Background(), change.Request{User: users[rand.IntN(len(users))], Host: host, Time: time.Now(), Priority: change.High})
				if err != nil {
					t.Error(err)
					return
				}
				n, _ := outcomes.LoadOrStore(res.Outcome, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		}()
	}
	wg.Wait()
	synced, _ := outcomes.Load(change.Synced)
	merged, _ := outcomes.Load(change.Coalesced)
	if synced == nil || merged == nil {
		t.Fatalf("the test did not exercise contention: synced %v, coalesced %v", synced, merged)
	}
	if c.tracker.Overlaps() != 0 {
		t.Fatalf("%d overlapping dsyncs", c.tracker.Overlaps())
	}
	// Both directions ran.
	dirs := map[string]bool{}
	for _, call := range c.tracker.Calls() {
		dirs[call.Host+"->"+call.Destination] = true
	}
	if !dirs["mail-a->tcp:mail-b:12345"] || !dirs["mail-b->tcp:mail-a:12345"] {
		t.Errorf("directions %v", dirs)
	}
	t.Logf("%d dsyncs for %d changes", len(c.tracker.Calls()), 32*25)
}

// Invariant 3: 100 changes during one slow dsync cause exactly one more.
func TestInvariantRealRedis_HundredChangesDuringOneDsyncCauseOneMore(t *testing.T) {
	c := newCluster(t, 3, opts)
	started, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	c.a.OnStart = func(doveadmtest.Call) {
		if first.CompareAndSwap(false, true) {
			close(started)
			<-release
		}
	}
	done := make(chan change.Result, 1)
	go func() {
		res, err := c.instances[0].r.Replicate(context.Background(), change.Request{User: "u1", Host: "mail-a", Time: time.Now()})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	<-started
	var wg sync.WaitGroup
	var merged atomic.Int64
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			in := c.instances[1+i%2]
			res, err := in.r.Replicate(context.Background(), change.Request{User: "u1", Host: "mail-a", Time: time.Now()})
			if err != nil || res.Outcome != change.Coalesced {
				t.Errorf("change %d during the dsync: %+v %v", i, res, err)
			}
			merged.Add(1)
		}(i)
	}
	wg.Wait()
	close(release)
	res := <-done
	if n := len(c.tracker.CallsOf("u1")); n != 2 {
		t.Fatalf("%d dsyncs, want 2 (the slow one and exactly one more)", n)
	}
	if res.Outcome != change.Synced || res.Coalesced != 101 || merged.Load() != 100 {
		t.Errorf("result %+v", res)
	}
	st, _ := c.st.Status(context.Background(), "u1")
	if !st.PendingSince.IsZero() || st.InProgress {
		t.Errorf("status %+v", st)
	}
}

// Invariant 1 under a crash: an instance dies mid-dsync without unlocking;
// after the lock's TTL another instance syncs, and nothing is lost.
func TestInvariantRealRedis_CrashedOwnerIsFollowedAfterTTL(t *testing.T) {
	c := newCluster(t, 2, opts)
	var calls atomic.Int32
	c.a.Respond = func(doveadmtest.Call) doveadmtest.Reply {
		if calls.Add(1) == 1 {
			return doveadmtest.Reply{Delay: time.Minute} // cut short when the caller goes away
		}
		return doveadmtest.Reply{}
	}
	started := make(chan struct{}, 4)
	c.a.OnStart = func(doveadmtest.Call) { started <- struct{}{} }
	crashed, cctx := c.instances[0], context.Background()
	cctx, kill := context.WithCancel(cctx)
	errc := make(chan error, 1)
	go func() {
		_, err := crashed.r.Replicate(cctx, change.Request{User: "u1", Host: "mail-a", Time: time.Now()})
		errc <- err
	}()
	<-started
	// Crash: no Redis connection to unlock with, then the process is gone.
	crashed.rdb.Close()
	kill()
	if err := <-errc; !errors.Is(err, replicator.ErrAborted) {
		t.Fatalf("crashed instance: %v", err)
	}
	crashedAt := time.Now()
	survivor := c.instances[1]
	// While the dead owner's lock lives, a change is left pending.
	res, err := survivor.r.Replicate(context.Background(), change.Request{User: "u1", Host: "mail-a", Time: time.Now()})
	if err != nil || res.Outcome != change.Coalesced {
		t.Fatalf("change during the dead owner's TTL: %+v %v", res, err)
	}
	// After the TTL the next event syncs.
	deadline := time.Now().Add(opts.LockTTL + 4*time.Second)
	for {
		res, err = survivor.r.Replicate(context.Background(), change.Request{User: "u1", Host: "mail-a", Time: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if res.Outcome == change.Synced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dsync %s after the crash: %+v", time.Since(crashedAt), res)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, _ := c.st.Status(context.Background(), "u1")
	if !st.PendingSince.IsZero() || st.InProgress || st.InProgressBy != "" {
		t.Errorf("status %+v: the pending change should be covered and the lock gone", st)
	}
}

// Invariant 1: every acknowledged change is covered by a successful dsync
// that started after it, with transient failures along the way.
func TestInvariantRealRedis_EveryAckedChangeIsCovered(t *testing.T) {
	c := newCluster(t, 3, opts)
	// Transient failures: of every five dsyncs of a user (the lock makes
	// them a sequence), the second answers 75 and the third an empty reply,
	// so a request never runs out of its four attempts.
	var mu0 sync.Mutex
	perUser := map[string]int{}
	for _, s := range []*doveadmtest.Server{c.a, c.b} {
		s.Respond = func(call doveadmtest.Call) doveadmtest.Reply {
			mu0.Lock()
			perUser[call.User]++
			n := perUser[call.User]
			mu0.Unlock()
			switch n % 5 {
			case 2:
				return doveadmtest.Reply{ExitCode: 75}
			case 3:
				return doveadmtest.Reply{Empty: true}
			}
			return doveadmtest.Reply{Delay: time.Duration(rand.IntN(4000)) * time.Microsecond}
		}
	}
	type acked struct {
		user string
		at   time.Time
	}
	var mu sync.Mutex
	var acks []acked
	users := []string{"u1", "u2", "u3"}
	var wg sync.WaitGroup
	for g := 0; g < 24; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				u := users[rand.IntN(len(users))]
				at := time.Now()
				in := c.instances[rand.IntN(len(c.instances))]
				res, err := in.r.Replicate(context.Background(), change.Request{User: u, Host: []string{"mail-a", "mail-b"}[rand.IntN(2)], Time: at})
				if err != nil {
					continue // not acknowledged: the Broker would redeliver
				}
				if res.Outcome == change.Failed {
					t.Errorf("failed after every attempt (test failures are transient): %+v", res.Failure)
					continue
				}
				mu.Lock()
				acks = append(acks, acked{u, at})
				mu.Unlock()
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	latest := map[string]time.Time{}
	failed := 0
	for _, call := range c.tracker.Calls() {
		if !succeeded(call) {
			failed++
		}
		if succeeded(call) && call.Start.After(latest[call.User]) {
			latest[call.User] = call.Start
		}
	}
	if failed == 0 {
		t.Error("no failed dsync: the retries were not exercised")
	}
	for _, a := range acks {
		if !latest[a.user].After(a.at) {
			t.Errorf("change of %s at %s acknowledged, but the last successful dsync started %s", a.user, a.at.Format(time.StampMicro), latest[a.user].Format(time.StampMicro))
		}
	}
	pending, err := c.st.Pending(context.Background(), 10)
	if err != nil || len(pending) != 0 {
		t.Errorf("pending after the storm: %+v %v", pending, err)
	}
	if len(acks) < 400 {
		t.Errorf("only %d of 480 changes acknowledged", len(acks))
	}
	t.Logf("%d acknowledged changes, %d dsync calls", len(acks), len(c.tracker.Calls()))
}
