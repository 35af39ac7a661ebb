package loadgen

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestHistogram_ExactBelow128ns(t *testing.T) {
	var h Histogram
	for v := 100; v >= 1; v-- {
		h.Record(time.Duration(v))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0, 1}, {0.01, 1}, {0.5, 50}, {0.9, 90}, {0.99, 99}, {0.999, 100}, {1, 100}} {
		if got := h.Quantile(tc.q); got != tc.want {
			t.Errorf("Quantile(%g) = %d, want %d", tc.q, got, tc.want)
		}
	}
	if h.Count() != 100 || h.Min() != 1 || h.Max() != 100 || h.Mean() != 50 {
		t.Errorf("count %d min %d max %d mean %d", h.Count(), h.Min(), h.Max(), h.Mean())
	}
}

func TestHistogram_PercentilesOfKnownData(t *testing.T) {
	// 1 µs .. 100 ms in 1 µs steps, shuffled: the q-quantile is q*100 ms.
	const n = 100000
	values := make([]time.Duration, n)
	for i := range values {
		values[i] = time.Duration(i+1) * time.Microsecond
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(n, func(i, j int) { values[i], values[j] = values[j], values[i] })
	var h Histogram
	for _, v := range values {
		h.Record(v)
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := float64(time.Duration(math.Ceil(q*n)) * time.Microsecond)
		got := float64(h.Quantile(q))
		if math.Abs(got-want)/want > 1.0/128 {
			t.Errorf("Quantile(%g) = %v, want %v within 0.8%%", q, time.Duration(got), time.Duration(want))
		}
	}
	if h.Max() != 100*time.Millisecond || h.Min() != time.Microsecond {
		t.Errorf("min %v max %v", h.Min(), h.Max())
	}
	if got, want := h.Mean(), 50000500*time.Nanosecond; got != want {
		t.Errorf("mean %v, want %v", got, want)
	}
}

func TestHistogram_MergeEqualsRecordingAll(t *testing.T) {
	var a, b, all Histogram
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 5000 {
		v := time.Duration(r.ExpFloat64() * float64(time.Millisecond))
		all.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	var empty Histogram
	a.Merge(&b)
	a.Merge(&empty)
	if a.counts != all.counts || a.Count() != all.Count() || a.Min() != all.Min() || a.Max() != all.Max() {
		t.Fatal("merged histogram differs from one that recorded everything")
	}
	if empty.Quantile(0.5) != 0 || empty.Mean() != 0 {
		t.Fatal("empty histogram reports non-zero values")
	}
}

func TestHistogram_BucketsCoverEveryValue(t *testing.T) {
	check := func(v uint64) {
		i := bucketOf(v)
		lo, width := bucketRange(i)
		if i < 0 || i >= numBuckets || v < lo || v-lo >= width {
			t.Fatalf("value %d: bucket %d [%d, +%d)", v, i, lo, width)
		}
		if lo >= subCount && float64(width)/float64(lo) > 1.0/64 {
			t.Fatalf("value %d: bucket too wide (%d at %d)", v, width, lo)
		}
	}
	for v := range uint64(5000) {
		check(v)
	}
	for s := range 64 {
		p := uint64(1) << s
		check(p - 1)
		check(p)
		check(p + 1)
	}
	check(math.MaxUint64)
	r := rand.New(rand.NewPCG(5, 6))
	for range 10000 {
		check(r.Uint64() >> r.IntN(64))
	}
}

func TestHistogram_RecordRampMatchesRecordingEachValue(t *testing.T) {
	for _, tc := range []struct {
		top, step float64
		n         uint64
	}{
		{5e9, 1e6, 5000},     // a backlog at 1000/s over 5 s
		{3e8, 1e5 / 3, 9000}, // a step that is not a whole number
		{1000, 7, 300},       // crosses zero: the rest count as zero
		{2e6, 0, 10},         // all equal
		{130, 1, 200},        // the exact buckets below 128
		{9e18, 3e14, 30000},  // near the top of time.Duration
	} {
		var bulk, each Histogram
		bulk.recordRamp(tc.top, tc.step, tc.n)
		for k := range tc.n {
			each.Record(time.Duration(max(tc.top-float64(k)*tc.step, 0)))
		}
		if bulk.Count() != each.Count() || bulk.Min() != each.Min() || bulk.Max() != each.Max() {
			t.Errorf("%+v: count/min/max %d %v %v, want %d %v %v", tc, bulk.Count(), bulk.Min(), bulk.Max(), each.Count(), each.Min(), each.Max())
		}
		if d := math.Abs(float64(bulk.Mean() - each.Mean())); d > 1e-6*float64(each.Mean())+1 {
			t.Errorf("%+v: mean %v, want %v", tc, bulk.Mean(), each.Mean())
		}
		for _, q := range []float64{0, 0.1, 0.5, 0.9, 0.99, 0.999, 1} {
			if g, w := bulk.Quantile(q), each.Quantile(q); g != w {
				t.Errorf("%+v: quantile %g %v, want %v", tc, q, g, w)
			}
		}
	}
}
