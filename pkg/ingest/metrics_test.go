package ingest

import (
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Hosts seen at once by many requests get one label each, up to
// maxHostLabels, and every event is counted under its label.
func TestHostMetrics_Concurrent(t *testing.T) {
	m := newIngestMetrics(prometheus.NewRegistry())
	const workers, hosts = 8, maxHostLabels + 44
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < hosts; i++ {
				m.host(fmt.Sprint("h", i)).received.Inc()
			}
		}()
	}
	wg.Wait()
	if n := len(*m.hosts.Load()); n != maxHostLabels {
		t.Errorf("%d host labels, want %d", n, maxHostLabels)
	}
	var total float64
	for _, hm := range *m.hosts.Load() {
		if got := testutil.ToFloat64(hm.received); got != workers {
			t.Errorf("host %s counted %v events, want %d", hm.label, got, workers)
		}
		total += testutil.ToFloat64(hm.received)
	}
	other := testutil.ToFloat64(m.received.WithLabelValues(otherHost))
	if total+other != workers*hosts || other != workers*(hosts-maxHostLabels) {
		t.Errorf("counted %v + %v under %s, want %d", total, other, otherHost, workers*hosts)
	}
}
