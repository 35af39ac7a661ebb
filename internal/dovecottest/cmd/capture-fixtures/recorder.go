package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// recorder is an HTTP listener on 127.0.0.1 that keeps every POSTed body,
// answering 200 at once.
type recorder struct {
	mu     sync.Mutex
	bodies [][]byte
	last   time.Time
	ln     net.Listener
	srv    *http.Server
}

func startRecorder() (*recorder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("recorder: listen: %w", err)
	}
	r := &recorder{ln: ln, last: time.Now()}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

func (r *recorder) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if req.Method == http.MethodPost {
		r.mu.Lock()
		r.bodies = append(r.bodies, body)
		r.last = time.Now()
		r.mu.Unlock()
	}
	w.WriteHeader(http.StatusOK)
}

// URL is the exporter URL to give Dovecot.
func (r *recorder) URL() string { return "http://" + r.ln.Addr().String() + "/events" }

// mark returns the number of bodies received so far.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bodies)
}

// since returns the bodies received after mark m.
func (r *recorder) since(m int) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.bodies[m:]...)
}

// waitQuiet returns once no body has arrived for quiet (counted from now
// at the earliest), or after max.
func (r *recorder) waitQuiet(ctx context.Context, quiet, max time.Duration) {
	start := time.Now()
	for {
		r.mu.Lock()
		last := r.last
		r.mu.Unlock()
		if last.Before(start) {
			last = start
		}
		idle := time.Since(last)
		if idle >= quiet || time.Since(start) >= max {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(quiet - idle + 5*time.Millisecond):
		}
	}
}

// waitFor waits until every event name in names was received after mark m,
// or max has passed; it reports the names still missing.
func (r *recorder) waitFor(ctx context.Context, m int, names []string, max time.Duration) []string {
	deadline := time.Now().Add(max)
	for {
		var missing []string
		bodies := r.since(m)
		for _, n := range names {
			needle := []byte(`"event":"` + n + `"`)
			found := false
			for _, b := range bodies {
				if bytes.Contains(b, needle) {
					found = true
					break
				}
			}
			if !found {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return missing
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *recorder) close() { _ = r.srv.Close() }
