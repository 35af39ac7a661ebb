package loadgen

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Report is the outcome of a run. Durations are nanoseconds in JSON.
type Report struct {
	URL         string  `json:"url"` // password and query tokens redacted
	Version     Version `json:"version"`
	Concurrency int     `json:"concurrency"`
	TargetRate  float64 `json:"target_rate"` // 0: as fast as possible
	// Sent counts requests started; each ends as exactly one of a status
	// (OK counts the 2xx ones), a transport error, a timeout or canceled.
	Sent   uint64         `json:"sent"`
	OK     uint64         `json:"ok"`
	Status map[int]uint64 `json:"status"`
	// Errors are transport failures other than timeouts (refused, reset).
	Errors uint64 `json:"errors"`
	// Timeouts are requests not answered within the timeout counted from
	// their due time (see Config.Timeout), including those whose time ran
	// out while they waited for their connection and were never written.
	Timeouts uint64 `json:"timeouts"`
	// Canceled requests were cut short by the caller (an interrupt), not by
	// the receiver, and do not count as failures.
	Canceled    uint64 `json:"canceled"`
	Interrupted bool   `json:"interrupted,omitempty"`
	// Behind counts requests a paced run with a Duration had scheduled
	// inside its window but could not send before the window closed: the
	// target rate was not sustained (by the receiver or by this machine).
	// Their waits are in Latency (see Latency.Unsent).
	Behind     uint64        `json:"behind,omitempty"`
	FirstError string        `json:"first_error,omitempty"`
	Duration   time.Duration `json:"duration_ns"`
	Rate       float64       `json:"rate"` // completed (not canceled) requests per second
	Latency    Latency       `json:"latency"`
}

// Latency summarises, over answered requests, the time until the response
// was read. In a paced run a request whose worker was still busy with
// earlier answers when its slot in the fixed schedule came is timed from
// that slot, not from when it finally went out, so a stalling receiver shows
// up as the queueing delay real senders would see instead of being hidden
// (coordinated omission). A request whose worker was idle and slept until
// its slot is timed from the send, so timer overshoot is not blamed on the
// receiver. Unpaced runs always time from the send.
//
// The requests a paced run had due inside its window but never sent (the
// Report's Behind) count too, each at its wait from its due time to the end
// of the run: a lower bound of the latency it would have had, so a receiver
// that stalls near the end of the run is not hidden either. Timeouts and
// transport errors are not in the distribution.
type Latency struct {
	// FromSchedule says the run was paced, so requests that went out late
	// were timed from their due time.
	FromSchedule bool `json:"from_schedule"`
	// Count is the number of samples: answers plus Unsent.
	Count uint64 `json:"count"`
	// Unsent of the samples are requests never sent, counted at their
	// wait until the end of the run.
	Unsent uint64        `json:"unsent"`
	Min    time.Duration `json:"min_ns"`
	Mean   time.Duration `json:"mean_ns"`
	P50    time.Duration `json:"p50_ns"`
	P90    time.Duration `json:"p90_ns"`
	P99    time.Duration `json:"p99_ns"`
	P999   time.Duration `json:"p999_ns"`
	Max    time.Duration `json:"max_ns"`
}

// Failed counts requests that neither got a 2xx answer nor were canceled.
func (r Report) Failed() uint64 { return r.Sent - r.OK - r.Canceled }

// WriteText writes the report for people.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	target := "as fast as possible"
	if r.TargetRate > 0 {
		target = fmt.Sprintf("target %g/s", r.TargetRate)
	}
	fmt.Fprintf(&b, "loadgen: Dovecot %s events to %s, %d connection(s), %s\n", r.Version, r.URL, r.Concurrency, target)
	fmt.Fprintf(&b, "  sent      %d in %s (%.1f/s)\n", r.Sent, short(r.Duration), r.Rate)
	fmt.Fprintf(&b, "  ok (2xx)  %d\n", r.OK)
	codes := make([]int, 0, len(r.Status))
	for c := range r.Status {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	b.WriteString("  status   ")
	if len(codes) == 0 {
		b.WriteString(" none")
	}
	for _, c := range codes {
		fmt.Fprintf(&b, " %d=%d", c, r.Status[c])
	}
	fmt.Fprintf(&b, "\n  failed    %d (%d transport errors, %d timeouts); %d canceled\n", r.Failed(), r.Errors, r.Timeouts, r.Canceled)
	l := r.Latency
	from := "from send"
	if l.FromSchedule {
		from = "late sends timed from their due time"
	}
	if l.Count == 0 {
		b.WriteString("  latency   none: no answers\n")
	} else {
		counted := fmt.Sprintf("%d answers", l.Count-l.Unsent)
		if l.Unsent > 0 {
			counted += fmt.Sprintf(" + %d never sent, counted at their wait", l.Unsent)
		}
		fmt.Fprintf(&b, "  latency   p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  mean %s (%s, %s)\n",
			short(l.P50), short(l.P90), short(l.P99), short(l.P999), short(l.Max), short(l.Mean), from, counted)
	}
	if r.FirstError != "" {
		fmt.Fprintf(&b, "  first error: %s\n", r.FirstError)
	}
	if r.Behind > 0 {
		fmt.Fprintf(&b, "  behind    %d scheduled requests not sent in time: target rate not sustained\n", r.Behind)
	}
	if r.Interrupted {
		b.WriteString("  interrupted before the run's bound\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// short rounds d to three significant digits or so for reading.
func short(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}

// tally is one worker's counts, merged into the Report at the end so the
// hot path touches no shared memory.
type tally struct {
	sent, ok, errors, timeouts, canceled uint64
	unsent                               uint64 // hist entries for requests never sent
	status                               [600]uint64
	odd                                  map[int]uint64 // codes >= 600
	firstErr                             error
	firstAt                              time.Time
	hist                                 Histogram
}

func (t *tally) countStatus(code int) {
	if code >= 200 && code < 300 {
		t.ok++
	}
	if code >= 0 && code < len(t.status) {
		t.status[code]++
		return
	}
	if t.odd == nil {
		t.odd = map[int]uint64{}
	}
	t.odd[code]++
}

func (t *tally) noteErr(err error, at time.Time) {
	if t.firstErr == nil {
		t.firstErr, t.firstAt = err, at
	}
}

func buildReport(cfg Config, redactedURL string, tallies []*tally, elapsed time.Duration, paced, interrupted bool) Report {
	r := Report{
		URL: redactedURL, Version: cfg.Version, Concurrency: cfg.Concurrency, TargetRate: cfg.Rate,
		Status: map[int]uint64{}, Duration: elapsed, Interrupted: interrupted,
	}
	var hist Histogram
	var first *tally
	var unsent uint64
	for _, t := range tallies {
		unsent += t.unsent
		r.Sent += t.sent
		r.OK += t.ok
		r.Errors += t.errors
		r.Timeouts += t.timeouts
		r.Canceled += t.canceled
		for code, n := range t.status {
			if n > 0 {
				r.Status[code] += n
			}
		}
		for code, n := range t.odd {
			r.Status[code] += n
		}
		hist.Merge(&t.hist)
		if t.firstErr != nil && (first == nil || t.firstAt.Before(first.firstAt)) {
			first = t
		}
	}
	if first != nil {
		r.FirstError = first.firstErr.Error()
	}
	if elapsed > 0 {
		r.Rate = float64(r.Sent-r.Canceled) / elapsed.Seconds()
	}
	r.Latency = Latency{
		FromSchedule: paced, Count: hist.Count(), Unsent: unsent, Min: hist.Min(), Mean: hist.Mean(),
		P50: hist.Quantile(0.50), P90: hist.Quantile(0.90), P99: hist.Quantile(0.99),
		P999: hist.Quantile(0.999), Max: hist.Max(),
	}
	return r
}
