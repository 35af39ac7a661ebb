// Package lograte bounds the log lines that what comes from outside can
// cause: a client per request, a flood of events while a queue is full, a
// dependency that is down at every attempt. A line that could come once
// per event is let through a few times a minute per key, and the next one
// let through says how many were left out; a counter beside it keeps the
// whole count.
package lograte

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// LeftOut is the attribute that says how many lines of a key were left
// out before the one logged.
const LeftOut = "left_out_before"

// Limiter lets through at most Burst lines per key in each window of
// Every, the window beginning at the first line of the key after the last
// window ended. Keys are a fixed, small set (a reason, a kind, a Trigger's
// name): each one is kept for the life of the Limiter. The zero value is
// not ready; use New.
type Limiter struct {
	burst int
	every time.Duration
	now   func() time.Time
	// says ends each message Log logs, when set (Saying).
	says string

	mu   sync.Mutex
	keys map[string]*window
}

// window is one key's current window.
type window struct {
	start   time.Time
	allowed int
	// leftOut counts the lines refused since the last one allowed.
	leftOut int
}

// New returns a Limiter that lets through burst lines per key every
// period.
func New(burst int, every time.Duration) *Limiter {
	if burst < 1 {
		burst = 1
	}
	return &Limiter{burst: burst, every: every, now: time.Now, keys: map[string]*window{}}
}

// PerMinute returns a Limiter that lets through burst lines per key a
// minute.
func PerMinute(burst int) *Limiter { return New(burst, time.Minute) }

// WithClock makes l read the time from now (a test's clock) and returns l.
func (l *Limiter) WithClock(now func() time.Time) *Limiter {
	l.now = now
	return l
}

// Saying makes Log end each message with how often the lines are let
// through, from the Limiter's own bound ("; logged 5 times a minute"),
// followed by per when it is not empty ("per Trigger"), and returns l. A
// message then cannot state a bound other than the one applied.
func (l *Limiter) Saying(per string) *Limiter {
	l.says = "; logged " + l.Bound()
	if per != "" {
		l.says += " " + per
	}
	return l
}

// Bound says how many lines of a key are let through in a window, in
// words: "once a minute", "5 times a minute", "3 times every 10s".
func (l *Limiter) Bound() string {
	times := "once"
	switch l.burst {
	case 1:
	case 2:
		times = "twice"
	default:
		times = strconv.Itoa(l.burst) + " times"
	}
	switch l.every {
	case time.Minute:
		return times + " a minute"
	case time.Second:
		return times + " a second"
	case time.Hour:
		return times + " an hour"
	}
	return times + " every " + l.every.String()
}

// Allow says whether a line under key may be logged now and, when it may,
// how many lines under key were refused since the last one allowed (for
// the line to say so).
func (l *Limiter) Allow(key string) (ok bool, leftOut int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.keys[key]
	if w == nil {
		w = &window{start: now}
		l.keys[key] = w
	} else if now.Sub(w.start) >= l.every || now.Before(w.start) {
		// A new window; what was left out in the last one is still
		// to be told. A clock stepped back starts one too.
		*w = window{start: now, leftOut: w.leftOut}
	}
	if w.allowed >= l.burst {
		w.leftOut++
		return false, 0
	}
	w.allowed++
	leftOut, w.leftOut = w.leftOut, 0
	return true, leftOut
}

// Log logs msg at level when Allow lets a line of key through, with
// LeftOut added when lines were left out before it, and the bound after
// msg when the Limiter is Saying it, and says whether it did.
func (l *Limiter) Log(ctx context.Context, log *slog.Logger, level slog.Level, key, msg string, attrs ...any) bool {
	ok, leftOut := l.Allow(key)
	if !ok {
		return false
	}
	if leftOut > 0 {
		attrs = append(attrs, LeftOut, leftOut)
	}
	log.Log(ctx, level, msg+l.says, attrs...)
	return true
}
