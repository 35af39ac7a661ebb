package redistest

import (
	"context"
	"testing"
)

func TestStart_ServesAndIsolates(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr == b.Addr {
		t.Fatalf("two servers on %s", a.Addr)
	}
	ctx := context.Background()
	ca, cb := a.Client(t), b.Client(t)
	if err := ca.Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := cb.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("second server sees the first's key: %d, %v", n, err)
	}
	if v, err := ca.Do(ctx, "TIME").Slice(); err != nil || len(v) != 2 {
		t.Fatalf("TIME: %v %v", v, err)
	}
}
