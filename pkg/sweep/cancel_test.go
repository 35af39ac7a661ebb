package sweep

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestStep_ABatchCancelledAfterItsRequestsWentOutIsRecorded: a stop that
// cancels a step's request (SIGTERM past --shutdown-timeout) once the
// Broker took the batch's requests must not keep the batch from being
// recorded. Unrecorded, the Broker's redelivery sent every request again,
// and the full syncs again after their first ran (a second full dsync of
// each user), since the record that they were asked for was lost too.
func TestStep_ABatchCancelledAfterItsRequestsWentOutIsRecorded(t *testing.T) {
	o := testOptions() // batches of 3
	f := newFixture(t, o, "u1", "u2", "u3", "u4", "u5")
	first, err := f.sw.Step(context.Background(), SweepReasonSchedule, nil)
	if err != nil || first.Next == nil {
		t.Fatalf("listing: %+v %v", first, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	taken := 0
	f.snd.fail = func(Request) error {
		// The stop comes as the Broker takes the last request of the
		// batch.
		if taken++; taken == o.BatchSize {
			cancel()
		}
		return nil
	}

	res, err := f.sw.Step(ctx, "", first.Next)

	if n := len(f.snd.all()); n != o.BatchSize {
		t.Fatalf("%d requests sent, want %d", n, o.BatchSize)
	}
	if err != nil || res.Outcome != Batched || res.Next == nil || res.Next.Offset != 3 {
		t.Errorf("cancelled step: %+v %v, want the batch done and its continuation at offset 3", res, err)
	}
	if st := f.status(t); st.Offset != 3 || st.Batches != 1 {
		t.Errorf("status offset %d batches %d, want the batch recorded (offset 3, 1 batch)", st.Offset, st.Batches)
	}
	if n, _ := f.rdb.ZCard(context.Background(), state.SweepFullKey).Result(); n != int64(o.BatchSize) {
		t.Errorf("%d full-sync records, want %d: the full syncs sent would be asked again", n, o.BatchSize)
	}
	// The sweep goes on from there (the Broker redelivers the event of a
	// step that failed) without asking for any user twice.
	f.snd.fail = nil
	c := res.Next
	if err != nil {
		c = first.Next
	}
	for c != nil {
		r, err := f.sw.Step(context.Background(), "", c)
		if err != nil {
			t.Fatal(err)
		}
		c = r.Next
	}
	byUser(t, f.snd.all())
	if n := len(f.snd.all()); n != 5 {
		t.Errorf("%d requests in all, want 5", n)
	}
}

// TestStep_AListingCancelledWithItsRequestIsNoFailureOfTheHost: a stop
// that cancels the listing step's request (SIGTERM past
// --shutdown-timeout) fails the step, which records nothing, and the next
// sweep.requested lists again. That is no failure of the host's listing:
// counted as one, it fired DovewardenSweepListFailures ("the sweep cannot
// list the users of ..."), and the log said the listing was cut short by
// the step's budget and the sweep went on with what was listed.
func TestStep_AListingCancelledWithItsRequestIsNoFailureOfTheHost(t *testing.T) {
	for _, list := range []string{ListUserdb, ListKnown} {
		t.Run(list, func(t *testing.T) {
			o := testOptions()
			o.List = list
			f := newFixture(t, o, "u1", "u2")
			if list == ListKnown {
				f.synced(t, "u1", time.Hour, true)
			}
			var logs safebuf.Buffer
			f.sw.log = slog.New(slog.NewTextHandler(&logs, nil))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// The stop comes while the host is listed, or while Redis's
			// users are read.
			var hold atomic.Bool
			hold.Store(true)
			f.dove.RespondList = func() doveadmtest.Reply {
				if hold.Load() {
					cancel()
					return doveadmtest.Reply{Delay: 2 * time.Second}
				}
				return doveadmtest.Reply{}
			}
			st := f.sw.st
			if list == ListKnown {
				f.sw.st = cancelOnKnownUsers{Store: f.st, cancel: cancel, hold: &hold}
			}

			if _, err := f.sw.Step(ctx, SweepReasonSchedule, nil); err == nil {
				t.Fatal("a step cancelled while it lists answered without an error")
			}

			label := "mail-a"
			if list == ListKnown {
				label = knownLabel
			}
			if n := testutil.ToFloat64(f.sw.m.listFailures.WithLabelValues(label)); n != 0 {
				t.Errorf("%v listing failures counted for %s, want none", n, label)
			}
			if strings.Contains(logs.String(), "cut short") {
				t.Errorf("the log says the listing was cut short and swept:\n%s", logs.String())
			}
			// The next sweep.requested lists again and sweeps.
			hold.Store(false)
			f.sw.st = st
			if got := f.run(t); got[0].Outcome != Started || got[len(got)-1].Outcome != Finished {
				t.Errorf("the next request: %+v", got)
			}
			if n := testutil.ToFloat64(f.sw.m.listFailures.WithLabelValues(label)); n != 0 {
				t.Errorf("%v listing failures counted for %s, want none", n, label)
			}
		})
	}
}

// cancelOnKnownUsers cancels the step's request as it reads the users
// Redis knows, while hold is set.
type cancelOnKnownUsers struct {
	*state.Store
	cancel func()
	hold   *atomic.Bool
}

func (c cancelOnKnownUsers) KnownUsers(ctx context.Context, n int, fn func([]string) error) error {
	if c.hold.Load() {
		c.cancel()
		<-ctx.Done()
	}
	return c.Store.KnownUsers(ctx, n, fn)
}
