package sweep

import (
	"context"
	"io"
	"log/slog"
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
