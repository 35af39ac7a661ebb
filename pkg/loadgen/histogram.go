package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// Histogram records durations in a fixed log-linear layout, as HDR
// histograms do: values below 128 ns are exact, and every power of two
// above is split into 64 buckets, so a reported percentile is within 1/128
// (0.8 %) of the true sample while memory stays constant (about 30 KB)
// however long the run. The zero value is ready to use; it is not safe for
// concurrent use (each worker keeps its own and they are merged).
type Histogram struct {
	counts [numBuckets]uint64
	n      uint64
	sum    float64
	min    uint64
	max    uint64
}

const (
	subBits    = 7
	subCount   = 1 << subBits // exact buckets below this value
	halfCount  = subCount / 2 // buckets per power of two above it
	numBuckets = subCount + (64-subBits)*halfCount
)

func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits // v>>shift is in [halfCount, subCount)
	return subCount + (shift-1)*halfCount + int(v>>shift) - halfCount
}

// bucketRange returns the smallest value of bucket i and its width.
func bucketRange(i int) (lo, width uint64) {
	if i < subCount {
		return uint64(i), 1
	}
	shift := (i-subCount)/halfCount + 1
	m := uint64((i-subCount)%halfCount + halfCount)
	return m << shift, 1 << shift
}

// Record adds one duration; negative ones count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	h.max = max(h.max, v)
	h.n++
	h.sum += float64(v)
}

// recordRamp records n values falling by step from top: top, top-step,
// top-2*step and so on (in nanoseconds; values below zero count as zero).
// It costs one step per bucket the values cross, not one per value, so a
// backlog of millions of requests is recorded at once.
func (h *Histogram) recordRamp(top, step float64, n uint64) {
	at := func(k uint64) uint64 { return uint64(max(top-float64(k)*step, 0)) }
	for k := uint64(0); k < n; {
		hi := at(k)
		end := n // one past the last k whose value is in hi's bucket
		if lo, _ := bucketRange(bucketOf(hi)); hi > 0 && step > 0 {
			if last := math.Floor((top - float64(lo)) / step); last < float64(n-1) {
				end = max(uint64(max(last, 0))+1, k+1)
			}
		}
		c := end - k
		low := at(end - 1)
		h.counts[bucketOf(hi)] += c
		if h.n == 0 || low < h.min {
			h.min = low
		}
		h.max = max(h.max, hi)
		h.n += c
		// The values are evenly spaced unless clamped at zero, so their
		// sum is their count times the mean of the first and last.
		h.sum += float64(c) * (float64(hi) + float64(low)) / 2
		k = end
	}
}

// Merge adds every sample of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of recorded samples.
func (h *Histogram) Count() uint64 { return h.n }

// Min is the smallest sample, exactly.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Max is the largest sample, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the average sample, exactly.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the sample at quantile q (0.99 for p99): the smallest
// recorded value such that at least q of all samples are at or below it,
// reported as the middle of its bucket and clamped to [Min, Max].
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, width := bucketRange(i)
			v := lo + (width-1)/2
			return time.Duration(min(max(v, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}
