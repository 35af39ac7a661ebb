package sweep

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// gateLister lists its users once gate is closed.
type gateLister struct {
	gate, entered chan struct{}
	users         []string
}

func (g *gateLister) ListUsers(ctx context.Context, _ doveadm.Endpoint, fn func(string) error) error {
	close(g.entered)
	<-g.gate
	for _, u := range g.users {
		if err := fn(u); err != nil {
			return err
		}
	}
	return nil
}

// TestSweep_ReplacedListingLeavesNoList: an administrator's sweep replaces
// the hourly one while that one lists its hosts, and drops its candidate
// list. The listing goes on and writes the list again; no step of the
// replaced sweep will record or drop it, so it must expire by itself.
func TestSweep_ReplacedListingLeavesNoList(t *testing.T) {
	f := newFixture(t, testOptions())
	gl := &gateLister{gate: make(chan struct{}), entered: make(chan struct{}), users: []string{"u1", "u2", "u3"}}
	slow := New(f.opts, f.st, gl, []Source{{Name: "mail-a", Endpoint: endpoint(f.dove)}}, f.snd,
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan error)
	go func() {
		_, err := slow.Step(context.Background(), SweepReasonSchedule, nil)
		done <- err
	}()
	<-gl.entered
	old := f.status(t).ID
	if res, err := f.sw.Step(context.Background(), "admin", nil); err != nil || res.Sweep == old {
		t.Fatalf("the administrator's sweep: %+v, %v; want one replacing %s", res, err, old)
	}
	close(gl.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	key := state.SweepUsersKey(old)
	if n := f.rdb.ZCard(context.Background(), key).Val(); n == 0 {
		t.Fatal("the replaced listing wrote no list: the test shows nothing")
	}
	f.mr.FastForward(24 * time.Hour)
	if n := f.rdb.Exists(context.Background(), key).Val(); n != 0 {
		t.Errorf("the replaced sweep's list %s is still there a day later", key)
	}
}

// replacingStore runs replace before the first read of a sweep's
// candidates: another sweep replaces the one whose batch was just claimed.
type replacingStore struct {
	*state.Store
	once    sync.Once
	replace func()
}

func (r *replacingStore) SweepUsers(ctx context.Context, id string, offset, n int64) ([]state.SweepEntry, error) {
	r.once.Do(r.replace)
	return r.Store.SweepUsers(ctx, id, offset, n)
}

// TestStep_ReplacedWhileReadingItsCandidatesSaysSo: an administrator's
// sweep replaces the hourly one just after a step of it claimed its
// batch, and drops its candidates. The step finds them gone; it logged
// that they had expired or been evicted by Redis, sending an
// administrator after a Redis that evicts keys, when a newer sweep
// had taken over and nothing was lost. It says so now, whether the newer
// sweep still runs or has finished already, ends the old sweep as stale,
// and leaves the newer sweep's lock alone.
func TestStep_ReplacedWhileReadingItsCandidatesSaysSo(t *testing.T) {
	for _, finished := range []bool{false, true} {
		f := newFixture(t, testOptions(), "u1", "u2", "u3", "u4", "u5")
		ctx := context.Background()
		first, err := f.sw.Step(ctx, SweepReasonSchedule, nil)
		if err != nil || first.Next == nil {
			t.Fatalf("start: %+v %v", first, err)
		}
		var newer Result
		rs := &replacingStore{Store: f.st, replace: func() {
			if newer, err = f.sw.Step(ctx, "admin", nil); err != nil || newer.Outcome != Started {
				t.Errorf("the administrator's sweep: %+v %v", newer, err)
			}
			if finished {
				f.continueFrom(t, newer.Next)
			}
		}}
		var logs bytes.Buffer
		sw := New(f.opts, rs, doveadm.NewHTTP(nil, 5*time.Second), []Source{{Name: "mail-a", Endpoint: endpoint(f.dove)}}, f.snd,
			prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&logs, nil)))

		r, err := sw.Step(ctx, "", first.Next)

		if err != nil || r.Next != nil || r.Outcome != Stale {
			t.Errorf("newer sweep finished %v: the replaced sweep's step: %+v %v; want it to end as stale", finished, r, err)
		}
		if strings.Contains(logs.String(), "expired, or evicted") || !strings.Contains(logs.String(), "replaced_by="+newer.Sweep) {
			t.Errorf("newer sweep finished %v: log:\n%s\nwant the sweep named replaced by %s, not its candidates expired or evicted",
				finished, logs.String(), newer.Sweep)
		}
		if st := f.status(t); st.ID != newer.Sweep || st.Running == finished {
			t.Errorf("newer sweep finished %v: after the step, status %+v; want the newer sweep %s, running %v", finished, st, newer.Sweep, !finished)
		}
	}
}

// TestStep_ReplacedDuringItsBatchSaysSo: an administrator's sweep
// replaces the hourly one while a step of it sends its batch. The step
// cannot record the batch; it logged that it had taken longer than its
// claim and another invocation had taken over, or that a sweep listing
// every user had replaced a retry sweep: neither had happened. It says
// now that a newer sweep replaced it, and ends the old sweep as stale.
func TestStep_ReplacedDuringItsBatchSaysSo(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "u3", "u4", "u5")
	ctx := context.Background()
	first, err := f.sw.Step(ctx, SweepReasonSchedule, nil)
	if err != nil || first.Next == nil {
		t.Fatalf("start: %+v %v", first, err)
	}
	var once sync.Once
	var newer Result
	f.snd.fail = func(Request) error {
		once.Do(func() {
			if newer, err = f.sw.Step(ctx, "admin", nil); err != nil || newer.Outcome != Started {
				t.Errorf("the administrator's sweep: %+v %v", newer, err)
			}
		})
		return nil
	}
	var logs bytes.Buffer
	f.sw.log = slog.New(slog.NewTextHandler(&logs, nil))

	r, err := f.sw.Step(ctx, "", first.Next)

	if err != nil || r.Next != nil || r.Outcome != Stale || r.Requested == 0 {
		t.Errorf("the replaced sweep's step: %+v %v; want it to end as stale, its requests sent", r, err)
	}
	if strings.Contains(logs.String(), "longer than its claim") || !strings.Contains(logs.String(), "replaced_by="+newer.Sweep) {
		t.Errorf("log:\n%s\nwant the sweep named replaced by %s, not its step late", logs.String(), newer.Sweep)
	}
}

// TestStep_ReplacedDuringItsListingSaysSo: as above, while the hourly
// sweep lists its hosts. Its listing step logged that it had taken longer
// than its claim and another invocation had taken over.
func TestStep_ReplacedDuringItsListingSaysSo(t *testing.T) {
	f := newFixture(t, testOptions(), "u1", "u2", "u3")
	gl := &gateLister{gate: make(chan struct{}), entered: make(chan struct{}), users: []string{"u1", "u2", "u3"}}
	var logs bytes.Buffer
	slow := New(f.opts, f.st, gl, []Source{{Name: "mail-a", Endpoint: endpoint(f.dove)}}, f.snd,
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&logs, nil)))
	type result struct {
		r   Result
		err error
	}
	done := make(chan result)
	go func() {
		r, err := slow.Step(context.Background(), SweepReasonSchedule, nil)
		done <- result{r, err}
	}()
	<-gl.entered
	newer, err := f.sw.Step(context.Background(), "admin", nil)
	if err != nil || newer.Outcome != Started {
		t.Fatalf("the administrator's sweep: %+v, %v", newer, err)
	}
	close(gl.gate)
	got := <-done

	if got.err != nil || got.r.Next != nil || got.r.Outcome != Stale {
		t.Errorf("the replaced sweep's listing step: %+v %v; want it to end as stale", got.r, got.err)
	}
	if strings.Contains(logs.String(), "longer than its claim") || !strings.Contains(logs.String(), "replaced_by="+newer.Sweep) {
		t.Errorf("log:\n%s\nwant the sweep named replaced by %s, not its listing late", logs.String(), newer.Sweep)
	}
}
