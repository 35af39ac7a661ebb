package sweep

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// collector is a Sender that records what it is given; fail, when set,
// chooses requests the Broker does not take.
type collector struct {
	mu   sync.Mutex
	reqs []Request
	fail func(Request) error
}

func (c *collector) Send(_ context.Context, r Request) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		if err := c.fail(r); err != nil {
			return err
		}
	}
	c.reqs = append(c.reqs, r)
	return nil
}

func (c *collector) all() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Request(nil), c.reqs...)
}

// byUser indexes requests by user; a user requested twice fails t.
func byUser(t *testing.T, reqs []Request) map[string]Request {
	t.Helper()
	m := map[string]Request{}
	for _, r := range reqs {
		if _, dup := m[r.User]; dup {
			t.Errorf("%s requested twice", r.User)
		}
		m[r.User] = r
	}
	return m
}

type fixture struct {
	mr   *miniredis.Miniredis
	rdb  *redis.Client
	st   *state.Store
	dove *doveadmtest.Server
	snd  *collector
	sw   *Sweeper
	reg  *prometheus.Registry
	opts Options
}

// testOptions keep steps quick: no pause between batches.
func testOptions() Options {
	o := Defaults
	o.BatchInterval = 0
	o.BatchSize = 3
	o.Budget = 10 * time.Second
	return o
}

func newFixture(t testing.TB, o Options, users ...string) *fixture {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	dove := doveadmtest.NewServer(t, "mail-a", nil)
	dove.SetUsers(users...)
	f := &fixture{mr: mr, rdb: rdb, st: state.New(rdb), dove: dove, snd: &collector{}, reg: prometheus.NewRegistry(), opts: o}
	f.build(t, []Source{{Name: "mail-a", Endpoint: endpoint(dove)}})
	return f
}

// useRealRedis moves the fixture to a real redis-server (its miniredis
// stays for the clock helpers only).
func (f *fixture) useRealRedis(t testing.TB) {
	t.Helper()
	srv := redistest.Start(t)
	f.rdb = srv.Client(t)
	f.st = state.New(f.rdb)
	f.sw.st = f.st
}

// build (re)makes the sweeper over the fixture's store and sender.
func (f *fixture) build(t testing.TB, sources []Source) {
	t.Helper()
	f.reg = prometheus.NewRegistry()
	f.sw = New(f.opts, f.st, doveadm.NewHTTP(nil, 5*time.Second), sources, f.snd, f.reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.sw.listPause = 20 * time.Millisecond
}

func endpoint(s *doveadmtest.Server) doveadm.Endpoint {
	return doveadm.Endpoint{Name: s.Name, URL: s.APIURL(), User: "doveadm", Password: s.Password, Destination: "tcp:replica:12345"}
}

// run starts a sweep and feeds every continuation back, as the Broker
// does, until there is none; it returns the results of every step.
func (f *fixture) run(t *testing.T) []Result {
	t.Helper()
	var out []Result
	var c *Cursor
	for i := 0; ; i++ {
		if i > 10000 {
			t.Fatal("the sweep never ends")
		}
		res, err := f.sw.Step(context.Background(), SweepReasonSchedule, c)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		out = append(out, res)
		if res.Next == nil {
			return out
		}
		c = res.Next
	}
}

// now is miniredis's clock as the scripts see it.
func (f *fixture) now() time.Time {
	v, err := f.rdb.Time(context.Background()).Result()
	if err != nil {
		panic(err)
	}
	return v
}

// synced records a successful dsync of user that started ago, full or not.
func (f *fixture) synced(t *testing.T, user string, ago time.Duration, full bool) {
	t.Helper()
	fl := "0"
	if full {
		fl = "1"
	}
	ms := strconv.FormatInt(f.now().Add(-ago).UnixMilli(), 10)
	if err := f.rdb.HSet(context.Background(), state.UserKey(user), state.FieldLastStart, ms, state.FieldLastFull, fl).Err(); err != nil {
		t.Fatal(err)
	}
}

// failed marks user failed ago.
func (f *fixture) failed(t *testing.T, user string, ago time.Duration) {
	t.Helper()
	if err := f.rdb.ZAdd(context.Background(), state.FailedKey, redis.Z{Score: float64(f.now().Add(-ago).UnixMilli()), Member: user}).Err(); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) status(t *testing.T) state.SweepStatus {
	t.Helper()
	st, err := f.st.SweepStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func users(reqs map[string]Request) []string {
	var out []string
	for u := range reqs {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

var errBroker = errors.New("broker answered 503")
