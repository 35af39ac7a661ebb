package lograte

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTest(burst int, every time.Duration) (*Limiter, *fakeClock) {
	c := &fakeClock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	l := New(burst, every).WithClock(c.now)
	return l, c
}

type step struct {
	advance time.Duration
	key     string
	ok      bool
	leftOut int
}

func TestLimiter_Allow(t *testing.T) {
	tests := []struct {
		name  string
		burst int
		steps []step
	}{
		{"burst, then refused until the window ends, then the count told", 2, []step{
			{0, "a", true, 0},
			{time.Second, "a", true, 0},
			{time.Second, "a", false, 0},
			{time.Second, "a", false, 0},
			{57 * time.Second, "a", true, 2},
			{time.Second, "a", true, 0},
			{time.Second, "a", false, 0},
		}},
		{"keys have windows of their own", 1, []step{
			{0, "a", true, 0},
			{0, "b", true, 0},
			{time.Second, "a", false, 0},
			{time.Second, "b", false, 0},
			{time.Second, "b", false, 0},
			{time.Minute, "b", true, 2},
			{0, "a", true, 1},
		}},
		{"what was left out is told however long after", 1, []step{
			{0, "a", true, 0},
			{0, "a", false, 0},
			{24 * time.Hour, "a", true, 1},
			{time.Minute, "a", true, 0},
		}},
		{"a clock stepped back starts a window", 1, []step{
			{0, "a", true, 0},
			{0, "a", false, 0},
			{-time.Hour, "a", true, 1},
		}},
		{"a burst below one is one", 0, []step{
			{0, "a", true, 0},
			{0, "a", false, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, c := newTest(tt.burst, time.Minute)
			for i, s := range tt.steps {
				c.t = c.t.Add(s.advance)
				ok, left := l.Allow(s.key)
				if ok != s.ok || left != s.leftOut {
					t.Fatalf("step %d (%q): Allow = %v, %d; want %v, %d", i, s.key, ok, left, s.ok, s.leftOut)
				}
			}
		})
	}
}

// TestLimiter_CountsEveryLineAcrossGoroutines: of lines from many
// goroutines in one window, burst are allowed and the rest are all told
// by the next window's first line.
func TestLimiter_CountsEveryLineAcrossGoroutines(t *testing.T) {
	l, c := newTest(5, time.Minute)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if ok, _ := l.Allow("k"); ok {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed != 5 {
		t.Fatalf("allowed %d lines in one window, want 5", allowed)
	}
	c.t = c.t.Add(time.Minute)
	if ok, left := l.Allow("k"); !ok || left != 8000-5 {
		t.Fatalf("next window's first line: %v, left out %d; want true, %d", ok, left, 8000-5)
	}
}

func TestLimiter_LogSaysWhatWasLeftOut(t *testing.T) {
	l, c := newTest(1, time.Minute)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	ctx := context.Background()
	for i := range 3 {
		if got := l.Log(ctx, log, slog.LevelWarn, "k", "refused", "n", i); got != (i == 0) {
			t.Fatalf("line %d: Log = %v", i, got)
		}
	}
	c.t = c.t.Add(time.Minute)
	l.Log(ctx, log, slog.LevelError, "k", "refused", "n", 3)
	want := "level=WARN msg=refused n=0\nlevel=ERROR msg=refused n=3 left_out_before=2\n"
	if buf.String() != want {
		t.Fatalf("logged:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestLimiter_SayingEndsEachLineWithItsBound(t *testing.T) {
	for _, tc := range []struct {
		burst int
		every time.Duration
		per   string
		want  string
	}{
		{1, time.Minute, "per reason", "refused; logged once a minute per reason"},
		{2, time.Minute, "", "refused; logged twice a minute"},
		{5, time.Minute, "per Trigger", "refused; logged 5 times a minute per Trigger"},
		{3, time.Second, "", "refused; logged 3 times a second"},
		{1, time.Hour, "", "refused; logged once an hour"},
		{4, 10 * time.Second, "per kind", "refused; logged 4 times every 10s per kind"},
	} {
		l, _ := newTest(tc.burst, tc.every)
		l.Saying(tc.per)
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key != slog.MessageKey {
				return slog.Attr{}
			}
			return a
		}}))
		// One line more than the bound: only the bound's lines are logged.
		for range tc.burst + 1 {
			l.Log(context.Background(), log, slog.LevelWarn, "k", "refused")
		}
		want := strings.Repeat("msg=\""+tc.want+"\"\n", tc.burst)
		if buf.String() != want {
			t.Errorf("burst %d every %v per %q logged:\n%s\nwant:\n%s", tc.burst, tc.every, tc.per, buf.String(), want)
		}
	}
	// Without Saying, the message is logged as given.
	l, _ := newTest(5, time.Minute)
	var buf bytes.Buffer
	l.Log(context.Background(), slog.New(slog.NewTextHandler(&buf, nil)), slog.LevelWarn, "k", "as given")
	if !strings.Contains(buf.String(), "msg=\"as given\"") {
		t.Fatalf("logged %s, want the message as given", buf.String())
	}
}
