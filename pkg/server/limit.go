package server

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
)

// DefaultMaxConnections is --max-connections' default. Dovecot's exporter
// keeps one connection per host (its stats process; 2.4 can raise it with
// http_client_max_parallel_connections) and a Broker or Knative's
// queue-proxy one per request in flight, so a server of dovewarden has a
// few dozen; at up to about 40 KiB each (docs/benchmarks.md), 1024 bound
// their memory to some 40 MiB.
const DefaultMaxConnections = 1024

// connLimit bounds the connections a server holds open at once. A new
// connection beyond the bound first closes the connection that has been
// idle the longest: a keep-alive connection between requests, which its
// client opens again when it has a request to send; with none idle, the
// oldest new connection that has sent nothing for a second. With neither,
// the new connection waits, and those behind it wait in the kernel's
// listen backlog, until one ends or turns idle or quiet (a connection that
// begins a request and then stalls ends at the read-header timeout, 5 s; a
// keep-alive one whose next request stalls in its first 4 bytes, which
// net/http leaves to the idle timeout, counts as idle after as long).
// Without the bound, every connection a client opens and keeps (up to the
// idle timeout, 120 s) costs memory, until the process runs out of file
// descriptors and stops accepting at all.
type connLimit struct {
	max   int
	slots chan struct{} // one element per open connection
	// turnedIdle holds a token when a connection turned idle since a
	// waiting admit last looked.
	turnedIdle chan struct{}
	log        *slog.Logger

	closedForNew *prometheus.CounterVec
	waited       prometheus.Counter
	collectors   []prometheus.Collector
	// warns spaces the warnings that a new connection had to wait.
	warns *lograte.Limiter
}

func newConnLimit(max int, log *slog.Logger) *connLimit {
	l := &connLimit{max: max, slots: make(chan struct{}, max), turnedIdle: make(chan struct{}, 1), log: log, warns: lograte.PerMinute(1).Saying("")}
	l.closedForNew = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dovewarden_http_connections_closed_for_new_total",
		Help: "Connections closed at --max-connections to make room for a new one, by state: idle (a keep-alive connection between requests) or new (one that sent nothing for a second)."}, []string{"state"})
	for _, s := range []string{"idle", "new"} {
		l.closedForNew.WithLabelValues(s)
	}
	l.waited = prometheus.NewCounter(prometheus.CounterOpts{Name: "dovewarden_http_connections_waited_total",
		Help: "New connections that waited for a place at --max-connections, no connection being idle or quiet."})
	l.collectors = []prometheus.Collector{
		l.closedForNew, l.waited,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dovewarden_http_max_connections",
			Help: "The bound on open connections (--max-connections)."}, func() float64 { return float64(max) }),
	}
	return l
}

// admit takes a place for a connection just accepted, closing an idle or
// quiet one (from conns) when none is free, or else waiting for a place
// or for a connection to close, until closed ends. It says whether the
// connection got a place.
func (l *connLimit) admit(conns *unreadConns, closed <-chan struct{}) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	var tick <-chan time.Time
	for {
		if state, ok := conns.closeForNew(); ok {
			l.closedForNew.WithLabelValues(state).Inc()
			// Its place comes back as soon as the server sees it
			// end; only Accept, one at a time, takes places.
			select {
			case l.slots <- struct{}{}:
				return true
			case <-closed:
				return false
			}
		}
		if tick == nil {
			// Logged before it is counted: whoever sees the count
			// finds the line.
			l.warns.Log(context.Background(), l.log, slog.LevelWarn, "", "every connection is busy: a new one waits until one ends or turns idle",
				"max_connections", l.max, "setting", "max-connections")
			l.waited.Inc()
			// A new connection turns quiet without a signal: look
			// again now and then.
			t := time.NewTicker(freshQuiet / 4)
			defer t.Stop()
			tick = t.C
		}
		select {
		case l.slots <- struct{}{}:
			return true
		case <-closed:
			return false
		case <-l.turnedIdle:
		case <-tick:
		}
	}
}

// idle tells a connection waiting in admit that a connection turned idle.
func (l *connLimit) idle() {
	select {
	case l.turnedIdle <- struct{}{}:
	default:
	}
}

// release gives back the place of a connection that ended.
func (l *connLimit) release() { <-l.slots }

// limitListener admits each accepted connection through a connLimit.
type limitListener struct {
	net.Listener
	limit     *connLimit
	conns     *unreadConns
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if !l.limit.admit(l.conns, l.closed) {
		c.Close()
		return nil, net.ErrClosed
	}
	return c, nil
}

// Close also ends a wait for a place: the server is stopping.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}
