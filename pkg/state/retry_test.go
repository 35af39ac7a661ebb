package state_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// lostReply forwards TCP to a Redis server. Once armed, the next command a
// client sends reaches the server, but its reply is swallowed and the
// connection closed: the script ran and the client never heard of it (a
// reset connection, a proxy or sidecar restarting). go-redis then sends
// the command again on a new connection, as its default retries do.
type lostReply struct {
	ln    net.Listener
	to    string
	armed atomic.Bool
	cuts  atomic.Int32
}

func newLostReply(t *testing.T, to string) *lostReply {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lostReply{ln: ln, to: to}
	serveEach(t, ln, p.serve)
	return p
}

// serveEach accepts the connections of ln and hands each to serve, in a
// goroutine of its own, until t ends; it then closes ln and waits for
// them.
func serveEach(t *testing.T, ln net.Listener, serve func(net.Conn)) {
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { serve(c) })
		}
	})
}

// URL is a redis:// URL through the proxy.
func (p *lostReply) URL() string { return "redis://" + p.ln.Addr().String() + "/0" }

func (p *lostReply) serve(c net.Conn) {
	s, err := net.Dial("tcp", p.to)
	if err != nil {
		c.Close()
		return
	}
	var swallow atomic.Bool
	var once sync.Once
	closeBoth := func() { once.Do(func() { c.Close(); s.Close() }) }
	defer closeBoth()
	go func() {
		defer closeBoth()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if p.armed.CompareAndSwap(true, false) {
					swallow.Store(true)
				}
				if _, err := s.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 && swallow.Load() {
			p.cuts.Add(1)
			return
		}
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// cut arms the proxy for the next command and checks, after f, that it
// cut a reply: otherwise the test exercised nothing.
func (p *lostReply) cut(t *testing.T, f func()) {
	t.Helper()
	before := p.cuts.Load()
	p.armed.Store(true)
	f()
	if p.cuts.Load() == before {
		t.Fatal("the proxy cut no reply: no command was sent again")
	}
}

// viaLostReply returns a Store that reaches a real redis-server through a
// lostReply proxy, built from a URL as the serving roles build theirs (so
// with go-redis's default retries), and a Store that reaches it directly.
func viaLostReply(t *testing.T) (*lostReply, *state.Store, *state.Store) {
	t.Helper()
	srv := redistest.Start(t)
	p, st := lostReplyTo(t, srv.Addr)
	return p, st, state.New(srv.Client(t))
}

// lostReplyTo puts a lostReply proxy in front of the Redis at addr and
// returns it with a Store that reaches Redis through it.
func lostReplyTo(t *testing.T, addr string) (*lostReply, *state.Store) {
	t.Helper()
	p := newLostReply(t, addr)
	st, err := state.Open(state.Conn{URL: p.URL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// As the serving roles do at start, so that the cut command is the
	// script's EVALSHA itself.
	if err := st.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	return p, st
}

// beginA starts an attempt of u1 for owner A, token tokA.
func beginA(t *testing.T, st *state.Store) state.Claim {
	t.Helper()
	c, err := st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "A", Token: "tokA",
		Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatalf("begin: %+v %v", c, err)
	}
	return c
}

// A Begin whose reply is lost after it took the lock is sent again; it
// must answer Run to its own caller, not Busy with itself as the holder
// (the change would be acknowledged and no dsync run until the lock
// expired).
func TestRetriedBegin_RunsForItsCaller(t *testing.T) {
	p, st, _ := viaLostReply(t)
	var c state.Claim
	var err error
	p.cut(t, func() {
		c, err = st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "A", Token: "tokA",
			Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second})
	})
	if err != nil || c.Decision != state.Run {
		t.Fatalf("Begin sent twice answered %+v, %v; want run", c, err)
	}
	// The claim is usable: the dsync it starts is recorded, the lock freed.
	if _, next, err := st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "tokA", Host: "mail-a",
		Destination: "tcp:b:1", NewState: "s1", Start: c.Start, TTL: 30 * time.Second}); err != nil || next.Decision != state.Done {
		t.Fatalf("Succeed after it: %+v, %v", next, err)
	}
}

// A Succeed whose reply is lost after it found a change marked during the
// dsync and started the next attempt is sent again; it must answer Run
// again. Answering from the marks that attempt's start cleared said Done,
// dropped the user from the pending set and released the lock: a change
// acknowledged during the dsync was never replicated.
func TestRetriedSucceed_KeepsTheRerun(t *testing.T) {
	p, st, other := viaLostReply(t)
	c := beginA(t, st)
	var err error
	time.Sleep(3 * time.Millisecond)
	// Another instance's request of a full sync while the dsync runs:
	// acknowledged as busy.
	if b, err := other.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "B", Token: "tokB",
		Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second, Full: true}); err != nil || b.Decision != state.Busy {
		t.Fatalf("the other instance's change: %+v %v", b, err)
	}
	time.Sleep(3 * time.Millisecond)
	var next state.Claim
	p.cut(t, func() {
		_, next, err = st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "tokA", Host: "mail-a",
			Destination: "tcp:b:1", NewState: "s1", Start: c.Start, TTL: 30 * time.Second, MayRerun: true})
	})
	if err != nil || next.Decision != state.Run {
		t.Fatalf("Succeed sent twice answered %+v, %v; want run: a change acknowledged during the dsync is dropped", next, err)
	}
	if !next.Start.After(c.Start) || next.State != "s1" || !next.FullRequested || next.Merged != 1 {
		t.Fatalf("the rerun's claim %+v: want a start after %v, the recorded state, and the full sync asked for by the one change merged", next, c.Start)
	}
	pu, err := other.Pending(ctx, 10)
	if err != nil || len(pu) != 1 || pu[0].User != "u1" {
		t.Fatalf("pending during the rerun: %+v, %v; want u1 until the rerun succeeds", pu, err)
	}
	if _, last, err := st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "tokA", Host: "mail-a",
		Destination: "tcp:b:1", NewState: "s2", Start: next.Start, TTL: 30 * time.Second, MayRerun: true}); err != nil || last.Decision != state.Done {
		t.Fatalf("the rerun's Succeed: %+v, %v", last, err)
	}
}

// A Fail whose reply is lost is sent again and counted once.
func TestRetriedFail_CountsOnce(t *testing.T) {
	p, st, other := viaLostReply(t)
	c := beginA(t, st)
	var err error
	p.cut(t, func() {
		_, err = st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tokA", Host: "mail-a", Error: "exit code 75",
			Class: "tempfail", ExitCode: 75, Start: c.Start})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The same attempt giving up its lock is another call: counted too.
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tokA", Host: "mail-a", Error: "exit code 75",
		Class: "tempfail", ExitCode: 75, Start: c.Start, Final: true, Release: true}); err != nil {
		t.Fatal(err)
	}
	s, err := other.Status(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if s.ConsecutiveFailures != 2 || !s.Failed || s.InProgress {
		t.Fatalf("status %+v: want 2 failures (one sent twice), failed, not in progress", s)
	}
}

// The sweep's scripts, each sent twice after a lost reply, answer as
// their first run did; before, the second run found its own claim or its
// own record and answered "running", "lost" or "busy", and the sweep
// stalled until its lock expired.
func TestRetriedSweepScripts_AnswerAsTheFirstRun(t *testing.T) {
	p, st, other := viaLostReply(t)
	const id = "sweep-1"
	var start state.SweepStart
	var err error
	p.cut(t, func() { start, err = st.SweepBegin(ctx, id, "tok-list", "schedule", time.Minute, 10*time.Second) })
	if err != nil || start.Decision != "started" || start.ID != id {
		t.Fatalf("SweepBegin sent twice: %+v, %v; want started", start, err)
	}
	if err := other.SweepAddUsers(ctx, id, 0, []string{"u1", "u2", "u3"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	var total int64
	var finished bool
	p.cut(t, func() {
		total, finished, err = st.SweepListed(ctx, id, "tok-list", state.SweepListing{HostsJSON: `["mail-a"]`, Listed: 3}, time.Minute, time.Hour)
	})
	if err != nil || total != 3 || finished {
		t.Fatalf("SweepListed sent twice: %d, %t, %v; want 3 users to sweep", total, finished, err)
	}
	var batch state.SweepBatch
	p.cut(t, func() { batch, err = st.SweepClaim(ctx, id, 0, "tok-batch", time.Minute, 10*time.Second) })
	if err != nil || batch.Decision != "ok" || batch.Total != 3 {
		t.Fatalf("SweepClaim sent twice: %+v, %v; want ok", batch, err)
	}
	commit := state.SweepCommitArgs{ID: id, Token: "tok-batch", From: 0, To: 2, Counts: map[string]int64{"requested_pending": 2},
		LockTTL: time.Minute, UsersTTL: time.Hour}
	p.cut(t, func() { finished, err = st.SweepCommit(ctx, commit) })
	if err != nil || finished {
		t.Fatalf("SweepCommit sent twice: %t, %v; want the batch recorded, the sweep going on", finished, err)
	}
	// The last batch, sent twice too: the sweep completes, counted once.
	if batch, err = st.SweepClaim(ctx, id, 2, "tok-last", time.Minute, 10*time.Second); err != nil || batch.Decision != "ok" {
		t.Fatalf("claim of the last batch: %+v, %v", batch, err)
	}
	commit = state.SweepCommitArgs{ID: id, Token: "tok-last", From: 2, To: 3, Counts: map[string]int64{"requested_pending": 1},
		LockTTL: time.Minute, UsersTTL: time.Hour}
	p.cut(t, func() { finished, err = st.SweepCommit(ctx, commit) })
	if err != nil || !finished {
		t.Fatalf("the last SweepCommit sent twice: %t, %v; want finished", finished, err)
	}
	s, err := other.SweepStatus(ctx)
	if err != nil || s.ID != id || s.Running || s.Finished.IsZero() || s.Batches != 2 || s.Counts["requested_pending"] != 3 {
		t.Fatalf("sweep status %+v, %v; want %s finished after 2 batches, 3 requested", s, err, id)
	}
}

// A SweepBegin sent twice that replaced an abandoned sweep reports it
// both times: the caller drops that sweep's candidates and counts it.
func TestRetriedSweepBegin_ReportsTheAbandonedSweep(t *testing.T) {
	p, st, other := viaLostReply(t)
	if s, err := other.SweepBegin(ctx, "sweep-0", "tok-0", "schedule", 50*time.Millisecond, 50*time.Millisecond); err != nil || s.Decision != "started" {
		t.Fatalf("the first sweep: %+v, %v", s, err)
	}
	time.Sleep(150 * time.Millisecond) // its lock expires, unfinished
	var start state.SweepStart
	var err error
	p.cut(t, func() { start, err = st.SweepBegin(ctx, "sweep-1", "tok-1", "schedule", time.Minute, 10*time.Second) })
	if err != nil || start.Decision != "started" || start.ID != "sweep-1" || start.Abandoned != "sweep-0" {
		t.Fatalf("SweepBegin sent twice: %+v, %v; want sweep-1 started, sweep-0 abandoned", start, err)
	}
}

// A Restart or a Begin whose reply is lost answers the claim its first run
// made, with the full sync the attempt took over: starting again would find
// that request consumed and run an incremental sync.
func TestRetriedRestartAndBegin_KeepTheFullSyncAskedFor(t *testing.T) {
	p, st, other := viaLostReply(t)
	c := beginA(t, st)
	if b, err := other.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "B", Token: "tokB",
		Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second, Full: true}); err != nil || b.Decision != state.Busy {
		t.Fatalf("a full sync asked for meanwhile: %+v %v", b, err)
	}
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tokA", Host: "mail-a", Error: "exit code 75",
		Class: "tempfail", ExitCode: 75, Start: c.Start}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	var r state.Claim
	var err error
	p.cut(t, func() { r, err = st.Restart(ctx, "u1", "tokA", "tcp:b:1", 30*time.Second) })
	if err != nil || r.Decision != state.Run || !r.Start.After(c.Start) || !r.FullRequested {
		t.Fatalf("Restart sent twice: %+v, %v; want the next attempt, with the full sync asked for", r, err)
	}
	// The attempt fails for good and gives the request back; the next
	// Begin, sent twice, takes it over.
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tokA", Host: "mail-a", Error: "exit code 75",
		Class: "tempfail", ExitCode: 75, Start: r.Start, Final: true, Release: true, Full: true}); err != nil {
		t.Fatal(err)
	}
	var b state.Claim
	p.cut(t, func() {
		b, err = st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "A", Token: "tokC",
			Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second})
	})
	if err != nil || b.Decision != state.Run || !b.FullRequested {
		t.Fatalf("Begin sent twice: %+v, %v; want run, with the full sync asked for", b, err)
	}
}

// Succeed sent twice while Redis's TIME is behind the clock's mark (a
// failover to a host whose clock lags): the rerun it started has a start
// below the caller's, which must not hide that it was started.
func TestRetriedSucceed_AfterTheClockSteppedBack(t *testing.T) {
	mr := miniredis.RunT(t)
	p, st := lostReplyTo(t, mr.Addr())
	other := state.New(redis.NewClient(&redis.Options{Addr: mr.Addr()}))
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	mr.SetTime(t0)
	c := beginA(t, st)
	mr.SetTime(t0.Add(5 * time.Millisecond))
	if b, err := other.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "B", Token: "tokB",
		Destination: "tcp:b:1", At: t0.Add(5 * time.Millisecond), TTL: 30 * time.Second}); err != nil || b.Decision != state.Busy {
		t.Fatalf("a change during the dsync: %+v %v", b, err)
	}
	mr.SetTime(t0.Add(-100 * time.Millisecond)) // TIME steps back during the dsync
	var next state.Claim
	var err error
	p.cut(t, func() {
		_, next, err = st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "tokA", Host: "mail-a",
			Destination: "tcp:b:1", NewState: "s1", Start: c.Start, TTL: 30 * time.Second, MayRerun: true})
	})
	if err != nil || next.Decision != state.Run {
		t.Fatalf("Succeed sent twice after the clock stepped back: %+v, %v; want run", next, err)
	}
	if pu, err := other.Pending(ctx, 10); err != nil || len(pu) != 1 {
		t.Fatalf("pending %+v, %v; want u1 until the rerun succeeds", pu, err)
	}
}

// A Succeed whose first run answered done (the lock released, the user no
// longer pending) is sent again: it answers done again. Run again, it
// found the lock not its own and answered left, and the owner asked for
// the user again: a dsync for nothing.
func TestRetriedSucceed_AnswersDoneAgain(t *testing.T) {
	p, st, other := viaLostReply(t)
	c := beginA(t, st)
	var end time.Time
	var next state.Claim
	var err error
	p.cut(t, func() {
		end, next, err = st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "tokA", Host: "mail-a",
			Destination: "tcp:b:1", NewState: "s1", Start: c.Start, TTL: 30 * time.Second, MayRerun: true})
	})
	if err != nil || next.Decision != state.Done {
		t.Fatalf("Succeed sent twice answered %+v, %v; want done, as its first run", next, err)
	}
	s, err := other.Status(ctx, "u1")
	if err != nil || !s.LastSuccess.Equal(end) || !s.PendingSince.IsZero() || s.InProgress {
		t.Fatalf("status %+v, %v: want the success at %v, nothing pending or running", s, err, end)
	}
}

// A retry's failure while Redis's TIME stands behind the clock's mark (its
// start would be the same millisecond as the attempt it retries) is
// another call than that attempt's failure: counted and recorded. Taken
// for that call sent again, it was neither.
func TestRetriedFail_ARetryWhileTheClockStandsStill(t *testing.T) {
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	mr, st := clockedStore(t, t0)
	c := beginA(t, st)
	mr.SetTime(t0.Add(time.Second))
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tokA", Error: "first", Class: "tempfail", ExitCode: 75, Start: c.Start}); err != nil {
		t.Fatal(err)
	}
	mr.SetTime(t0.Add(-time.Minute)) // TIME steps back (NTP, a failover)
	c2, err := st.Restart(ctx, "u1", "tokA", "tcp:b:1", 30*time.Second)
	if err != nil || c2.Decision != state.Run || !c2.Start.After(c.Start) {
		t.Fatalf("restart %+v, %v: want a run starting after %v", c2, err, c.Start)
	}
	if _, err := st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tokA", Error: "second", Class: "tempfail", ExitCode: 75, Start: c2.Start}); err != nil {
		t.Fatal(err)
	}
	s, err := st.Status(ctx, "u1")
	if err != nil || s.ConsecutiveFailures != 2 || s.LastError != "second" {
		t.Fatalf("status %+v, %v: want 2 failures, the last one \"second\"", s, err)
	}
}

// A Begin that found the user busy, whose reply is lost, is sent again:
// its change is merged into the next attempt once. Counted twice, the
// rerun's claim and the replication.succeeded event that reports how many
// changes the dsync covered overstated them.
func TestRetriedBusyBegin_CountsOnce(t *testing.T) {
	p, st, other := viaLostReply(t)
	c, err := other.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "A", Token: "tokA",
		Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second})
	if err != nil || c.Decision != state.Run {
		t.Fatalf("begin: %+v %v", c, err)
	}
	time.Sleep(3 * time.Millisecond)
	var b state.Claim
	p.cut(t, func() {
		b, err = st.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-b", Owner: "B", Token: "tokB",
			Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second})
	})
	if err != nil || b.Decision != state.Busy || b.Holder != "A" {
		t.Fatalf("Begin sent twice while A runs: %+v, %v; want busy, held by A", b, err)
	}
	// Another change while A runs, not sent twice: counted.
	if b, err := other.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "B", Token: "tokC",
		Destination: "tcp:b:1", At: time.Now(), TTL: 30 * time.Second}); err != nil || b.Decision != state.Busy {
		t.Fatalf("the second change: %+v %v", b, err)
	}
	_, next, err := other.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "tokA", Host: "mail-a",
		Destination: "tcp:b:1", NewState: "s1", Start: c.Start, TTL: 30 * time.Second, MayRerun: true})
	if err != nil || next.Decision != state.Run {
		t.Fatalf("Succeed: %+v, %v; want the rerun for the changes marked meanwhile", next, err)
	}
	if next.Merged != 2 {
		t.Errorf("the rerun merged %d changes; want 2 (one of them sent twice)", next.Merged)
	}
}

// Changes left while busy that happened before the running attempt
// started are covered by it: its Succeed, answering done, says how many
// (the replication.succeeded event's coalesced counts them), also when
// the client sends it again after losing the reply. Before, done carried
// no count, and the pending count was dropped with the pending entry.
func TestRetriedSucceed_DoneCountsTheOlderBusyChanges(t *testing.T) {
	p, st, other := viaLostReply(t)
	c := beginA(t, st)
	for _, tok := range []string{"tokB", "tokC"} {
		b, err := other.Begin(ctx, state.BeginArgs{User: "u1", Host: "mail-a", Owner: "B", Token: tok,
			Destination: "tcp:b:1", At: c.Start.Add(-time.Minute), TTL: 30 * time.Second})
		if err != nil || b.Decision != state.Busy {
			t.Fatalf("a change from before the attempt, while it runs: %+v, %v; want busy", b, err)
		}
	}
	var next state.Claim
	var err error
	p.cut(t, func() {
		_, next, err = st.Succeed(ctx, state.SuccessArgs{User: "u1", Token: "tokA", Host: "mail-a",
			Destination: "tcp:b:1", NewState: "s1", Start: c.Start, TTL: 30 * time.Second, MayRerun: true})
	})
	if err != nil || next.Decision != state.Done || next.Merged != 2 {
		t.Fatalf("Succeed sent twice answered %+v, %v; want done, covering the 2 older changes", next, err)
	}
}
