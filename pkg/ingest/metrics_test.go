package ingest

import (
	"fmt"
	"sync"
	"testing"
	"time"

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

// The answer-time histogram has a series for each code ingest answers
// with before the first request, so a rate over it is 0, not nothing.
func TestAnswerSeries_FromTheStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	newIngestMetrics(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() == "dovewarden_ingest_request_duration_seconds" {
			for _, m := range mf.GetMetric() {
				codes[m.GetLabel()[0].GetValue()] = true
			}
		}
	}
	for _, code := range []string{"200", "202", "400", "401", "404", "405", "413", "415", "503"} {
		if !codes[code] {
			t.Errorf("no series for code %s before the first request (have %v)", code, codes)
		}
	}
}

// Hosts, which local mode's status calls while events arrive, reads the
// hosts past maxHostLabels (counted as _other) as the first of them
// is recorded: under the race detector, without a race.
func TestHostsSeen_WhileTheOtherHostsAreFirstCounted(t *testing.T) {
	m := newIngestMetrics(prometheus.NewRegistry())
	for i := 0; i < maxHostLabels; i++ {
		m.host(fmt.Sprint("h", i)).seen(time.Now())
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.host("one-too-many").seen(time.Now())
	}()
	seen := m.hostsSeen()
	<-done
	if len(seen) < maxHostLabels {
		t.Errorf("%d hosts listed, want at least %d", len(seen), maxHostLabels)
	}
	if seen := m.hostsSeen(); len(seen) != maxHostLabels+1 || seen[0].Host != otherHost {
		t.Errorf("after the event: %d hosts, first %q; want %d, %s first", len(seen), seen[0].Host, maxHostLabels+1, otherHost)
	}
}
