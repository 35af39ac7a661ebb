package loadgen

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Run sends cfg.Count requests or runs for cfg.Duration, whichever ends
// first, and reports what happened. It returns an error before sending
// anything when cfg is invalid or the URL is refused; afterwards it returns
// the full Report, with an error wrapping ErrRequestsFailed when some
// requests failed and cfg.AllowErrors is off. Canceling ctx stops the run
// early; the Report then says Interrupted.
//
// With a Rate, request i is due at start + i/Rate whichever worker takes it
// (open-loop pacing, the schedule split across workers by a shared ticket
// counter): a worker that fell behind sends at once instead of waiting
// another interval, so the rate holds while the receiver keeps up, and a
// late request's latency counts from its due time (see Latency).
func Run(ctx context.Context, cfg Config) (Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Report{}, err
	}
	target, approved, err := checkTarget(ctx, cfg.URL, cfg.AllowRemote)
	if err != nil {
		return Report{}, err
	}
	gen, err := NewGenerator(cfg)
	if err != nil {
		return Report{}, err
	}
	header, target := requestHeader(cfg, target)
	reqHead := requestHead(header, target)
	addrs, tlsConf := dialTarget(target, approved)

	// The target as messages and the report show it: a token in its
	// query hidden, as the password is (requestHeader took it out).
	shown := config.RedactURL(target.String())
	r := &runner{cfg: cfg, gen: gen, start: time.Now()}
	if cfg.Duration > 0 {
		r.deadline = r.start.Add(cfg.Duration)
	}
	if cfg.Rate > 0 {
		r.interval = float64(time.Second) / cfg.Rate
	}
	tallies := make([]*tally, cfg.Concurrency)
	var wg sync.WaitGroup
	for n := range tallies {
		w := &worker{runner: r, t: &tally{}, timer: time.NewTimer(time.Hour),
			c: &httpConn{url: shown, addrs: addrs, tls: tlsConf, head: reqHead}}
		w.timer.Stop()
		tallies[n] = w.t
		wg.Go(func() {
			defer w.c.close()
			w.run(ctx)
		})
	}
	wg.Wait()
	end := time.Now()
	interrupted := ctx.Err() != nil

	var behind uint64
	if r.interval > 0 && cfg.Duration > 0 && !interrupted {
		var sent uint64
		for _, t := range tallies {
			sent += t.sent
		}
		due := r.dueInWindow()
		if cfg.Count > 0 {
			due = min(due, cfg.Count)
		}
		behind = due - min(due, sent)
		if behind > 0 {
			// Tickets are taken in order, and none is sent once taken
			// after the window closed, so the unsent ones are the last:
			// sent up to due, whether a worker took and abandoned them or
			// none took them. Each waited at least from its due time to
			// the end of the run; leaving that wait out would show only
			// the answers from before a stall (coordinated omission).
			backlog := &tally{unsent: behind}
			backlog.hist.recordRamp(float64(end.Sub(r.start))-r.offset(sent), r.interval, behind)
			tallies = append(tallies, backlog)
		}
	}
	rep := buildReport(cfg, shown, tallies, end.Sub(r.start), r.interval > 0, interrupted)
	rep.Behind = behind
	if failed := rep.Failed(); failed > 0 && !cfg.AllowErrors {
		return rep, fmt.Errorf("%w: %d of %d (%d non-2xx, %d transport errors, %d timeouts; first: %s)",
			ErrRequestsFailed, failed, rep.Sent, failed-rep.Errors-rep.Timeouts, rep.Errors, rep.Timeouts, rep.FirstError)
	}
	return rep, nil
}

// requestHeader builds the headers every request carries. Credentials in
// the URL become a header here, once, and leave the URL.
func requestHeader(cfg Config, u *url.URL) (http.Header, *url.URL) {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "dovewarden-loadgen")
	basic := cfg.BasicAuth
	if basic == "" && u.User != nil {
		p, _ := u.User.Password()
		basic = u.User.Username() + ":" + p
	}
	switch {
	case cfg.Token != "":
		h.Set("Authorization", "Bearer "+cfg.Token)
	case basic != "":
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(basic)))
	}
	bare := *u
	bare.User = nil
	return h, &bare
}

// runner is the state all workers share.
type runner struct {
	cfg      Config
	gen      *Generator
	next     atomic.Uint64 // next event number: the ticket for one request
	start    time.Time
	deadline time.Time // zero without a Duration
	interval float64   // nanoseconds between due times; 0 when unpaced
}

// maxOffset is the latest due time, from the start, that a run can reach:
// some 292 years, time.Duration's range.
const maxOffset = float64(math.MaxInt64)

// offset is paced request i's due time, in nanoseconds from the start.
// The first is due at the start whatever the interval: at a rate below
// some 5.6e-300/s the interval is infinite, and 0 × Inf is NaN.
func (r *runner) offset(i uint64) float64 {
	if i == 0 {
		return 0
	}
	return float64(i) * r.interval
}

// scheduled says paced request i is due within the run: before the end
// of its Duration, if any, and within time.Duration's range. Compared in
// floating point: at a very low rate the offset does not fit a
// time.Duration, and converting it would wrap into the past and send at
// once.
func (r *runner) scheduled(i uint64) bool {
	offset := r.offset(i)
	return offset < maxOffset && (r.deadline.IsZero() || offset < float64(r.cfg.Duration))
}

// dueInWindow counts the requests a paced run with a Duration has due in
// its window: those scheduled says are, by the same floating-point
// comparison the workers make (Duration × Rate rounds differently, so its
// ceiling can count one that no worker sends).
func (r *runner) dueInWindow() uint64 {
	n := uint64(math.Ceil(r.cfg.Duration.Seconds() * r.cfg.Rate))
	for n > 0 && !r.scheduled(n-1) {
		n--
	}
	for r.scheduled(n) {
		n++
	}
	return n
}

// worker is one connection's sender.
type worker struct {
	*runner
	t     *tally
	c     *httpConn // the worker's connection, one request in flight
	body  []byte    // the current request's body
	timer *time.Timer
}

func (w *worker) run(ctx context.Context) {
	for ctx.Err() == nil {
		i := w.next.Add(1) - 1
		if w.cfg.Count > 0 && i >= w.cfg.Count {
			return
		}
		// The duration bounds the wall clock too: a paced run that fell
		// behind stops on time and reports the backlog as Behind.
		now := time.Now()
		if !w.deadline.IsZero() && !now.Before(w.deadline) {
			return
		}
		from := now // where this request's latency starts
		if w.interval > 0 {
			if !w.scheduled(i) {
				return // not due within the run
			}
			due := w.start.Add(time.Duration(w.offset(i)))
			if due.After(now) {
				if !w.sleep(ctx, due.Sub(now)) {
					return
				}
				// The worker was idle, so the receiver held nothing up;
				// any overshoot is timer slop (up to a millisecond on
				// Linux) and not the receiver's latency.
				from = time.Now()
			} else {
				from = due
			}
		}
		w.send(ctx, i, from)
	}
}

func (w *worker) sleep(ctx context.Context, d time.Duration) bool {
	w.timer.Reset(d)
	select {
	case <-w.timer.C:
		return true
	case <-ctx.Done():
		w.timer.Stop()
		return false
	}
}

// send posts event i, timed from from, its due time (or when its worker
// woke for it). The timeout runs from there too, as Dovecot's exporter's
// does from when the event was submitted (an absolute timeout: 2.3's
// http_client_request_set_timeout_msecs, 2.4's
// http_client_request_absolute_timeout): an event that waited behind slow
// answers for the whole timeout is dropped, counted as a timeout without
// being written.
func (w *worker) send(ctx context.Context, i uint64, from time.Time) {
	w.t.sent++
	deadline := from.Add(w.cfg.Timeout)
	now := time.Now()
	if !now.Before(deadline) {
		w.t.timeouts++
		//lint:ignore ST1005 spelled as net/http spells the other requests' errors, which this list shows beside it
		w.t.noteErr(fmt.Errorf("Post %q: timed out before it was written: waited %s behind earlier answers, timeout %s",
			w.c.url, short(now.Sub(from)), w.cfg.Timeout), now)
		return
	}
	w.body = w.gen.Append(w.body[:0], i, now)
	resp, err := w.c.roundTrip(ctx, w.body, deadline)
	done := time.Now()
	switch {
	case err == nil:
		w.t.countStatus(resp.StatusCode)
		w.t.hist.Record(done.Sub(from))
		if resp.StatusCode/100 != 2 && w.t.firstErr == nil {
			w.t.noteErr(fmt.Errorf("HTTP %s", resp.Status), done)
		}
	case ctx.Err() != nil:
		w.t.canceled++
	case isTimeout(err):
		w.t.timeouts++
		w.t.noteErr(&url.Error{Op: "Post", URL: w.c.url, Err: err}, done)
	default:
		w.t.errors++
		w.t.noteErr(&url.Error{Op: "Post", URL: w.c.url, Err: err}, done)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
