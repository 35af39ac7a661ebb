package syncer

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/metrics"
)

// EvictionReader is what the Redis collector reads; *state.Store
// implements it.
type EvictionReader interface {
	MayEvict(ctx context.Context) (evict, ok bool)
}

// redisCollector reads the Redis server's eviction setting at each
// scrape: the warning at start misses a change made later (CONFIG SET, a
// managed Redis), and an alert needs a series.
type redisCollector struct {
	r     EvictionReader
	evict *prometheus.Desc
}

// NewRedisCollector returns the collector of dovewarden_redis_may_evict:
// 1 while the server may evict dovewarden's keys, 0 when it may not, and
// no sample when it does not say (INFO refused, Redis down).
func NewRedisCollector(r EvictionReader) prometheus.Collector {
	return &redisCollector{r: r, evict: prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, "", metrics.RedisMayEvict),
		"1 while the Redis server may evict dovewarden's keys when it is full (a maxmemory with a maxmemory-policy other than noeviction), read at each scrape.",
		nil, nil)}
}

func (c *redisCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.evict }

func (c *redisCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	evict, ok := c.r.MayEvict(ctx)
	if !ok {
		return
	}
	v := 0.0
	if evict {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.evict, prometheus.GaugeValue, v)
}
