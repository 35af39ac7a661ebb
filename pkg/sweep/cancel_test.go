package sweep

import (
	"context"
	"testing"

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
