package sweep

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// boundedStore records the largest slice of users any one call moved.
type boundedStore struct {
	*state.Store
	mu           sync.Mutex
	maxAdd       int
	maxRead      int
	maxFacts     int
	reads, facts int
}

func (b *boundedStore) SweepAddUsers(ctx context.Context, id string, host int, users []string, ttl time.Duration) error {
	b.mu.Lock()
	b.maxAdd = max(b.maxAdd, len(users))
	b.mu.Unlock()
	return b.Store.SweepAddUsers(ctx, id, host, users, ttl)
}

func (b *boundedStore) SweepUsers(ctx context.Context, id string, offset, n int64) ([]state.SweepEntry, error) {
	b.mu.Lock()
	b.maxRead = max(b.maxRead, int(n))
	b.reads++
	b.mu.Unlock()
	return b.Store.SweepUsers(ctx, id, offset, n)
}

func (b *boundedStore) SweepFacts(ctx context.Context, users []string) ([]state.SweepFacts, error) {
	b.mu.Lock()
	b.maxFacts = max(b.maxFacts, len(users))
	b.facts++
	b.mu.Unlock()
	return b.Store.SweepFacts(ctx, users)
}

// 100,000 listed users: listed once, stored 1,000 at a time, read and
// decided a chunk at a time, requested each exactly once in batches of at
// most BatchSize, however many steps that takes. On a real Redis: miniredis
// sorts a whole sorted set for every range read, which would make this
// test about a fixture, not the sweep.
func TestIntegrationRedis_100000UsersInBoundedBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 users on a real redis-server")
	}
	const n = 100_000
	all := make([]string, n)
	for i := range all {
		all[i] = fmt.Sprintf("user%06d@example.org", i)
	}
	o := testOptions()
	o.BatchSize = 2000
	f := newFixture(t, o, all...)
	f.useRealRedis(t)
	bs := &boundedStore{Store: f.st}
	f.sw.st = bs

	steps := f.run(t)

	got := byUser(t, f.snd.all())
	if len(got) != n {
		t.Fatalf("%d users requested, want %d", len(got), n)
	}
	for _, r := range steps {
		if r.Requested > o.BatchSize {
			t.Errorf("a step sent %d requests, batch size %d", r.Requested, o.BatchSize)
		}
	}
	if want := n/o.BatchSize + 1; len(steps) != want {
		t.Errorf("%d steps, want %d", len(steps), want)
	}
	if f.dove.ListCalls() != 1 {
		t.Errorf("listed %d times, want once per sweep", f.dove.ListCalls())
	}
	if bs.maxAdd > listChunk || bs.maxRead > 1000 || bs.maxFacts > 1000 {
		t.Errorf("largest chunks: add %d, read %d, facts %d", bs.maxAdd, bs.maxRead, bs.maxFacts)
	}
	if st := f.status(t); st.Total != n || st.Counts["requested_never"] != n {
		t.Errorf("status %+v", st)
	}
}
