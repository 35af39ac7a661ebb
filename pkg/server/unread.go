package server

import (
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// unreadConns finds, when the server shuts down, the connections on which
// no byte has arrived yet, and closes them. http.Server.Shutdown treats a
// new connection as idle only once it is 5 seconds old (golang/go#22682),
// so without this a stop waits up to 5 s for a connection that will never
// carry a request: net/http's Transport dials a spare one while it waits
// for a busy one, and keeps it in its pool unused. Sync's posts to a
// standalone broker make such connections. A connection on which a
// request has begun to arrive is left to finish.
//
// Over TLS the handshake's bytes arrive before any request, so a new
// connection that has been quiet for tlsQuiet counts as unused too: a
// spare connection handshakes at once and then sends nothing, and a client
// that began a request and then paused that long is stalled anyway. The
// stop looks again while it lasts, for one whose handshake ended just
// before it.
//
// It also finds the connections a request is being read from or answered
// on, so that a stop that cancels the requests can also end their reads:
// a client that sent part of a body and then nothing holds its handler in
// a read that no context cancels.
//
// With a connLimit it also gives back a connection's place when the
// connection ends, and finds a connection to close for a new one at the
// bound (closeForNew).
type unreadConns struct {
	mu     sync.Mutex
	fresh  map[*readConn]struct{}  // in http.StateNew
	active map[*readConn]struct{}  // in http.StateActive
	idle   map[*readConn]time.Time // in http.StateIdle, since when
	limit  *connLimit              // nil: no bound
}

// tlsQuiet is how long a new TLS connection must have sent nothing to be
// closed at a stop as unused.
const tlsQuiet = 500 * time.Millisecond

// readConn remembers whether anything was read from it, and when last.
type readConn struct {
	net.Conn
	tls      bool      // the server's TLS runs over it
	accepted time.Time // when it was admitted
	read     atomic.Bool
	lastRead atomic.Int64 // UnixNano
}

func (c *readConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.read.Store(true)
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// unused says nothing of a request can have arrived on c.
func (c *readConn) unused() bool {
	if !c.read.Load() {
		return true
	}
	return c.tls && time.Since(time.Unix(0, c.lastRead.Load())) > tlsQuiet
}

// CloseWrite keeps the TCP half-close net/http uses before closing a
// connection it answered.
func (c *readConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

type readListener struct {
	net.Listener
	tls bool
}

func (l readListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &readConn{Conn: c, tls: l.tls, accepted: time.Now()}, nil
}

func newUnreadConns(limit *connLimit) *unreadConns {
	return &unreadConns{fresh: map[*readConn]struct{}{}, active: map[*readConn]struct{}{},
		idle: map[*readConn]time.Time{}, limit: limit}
}

// connState is the server's ConnState hook.
func (u *unreadConns) connState(c net.Conn, s http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	rc, ok := c.(*readConn)
	if !ok {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.fresh, rc)
	delete(u.active, rc)
	delete(u.idle, rc)
	switch s {
	case http.StateNew:
		u.fresh[rc] = struct{}{}
	case http.StateActive:
		u.active[rc] = struct{}{}
	case http.StateIdle:
		u.idle[rc] = time.Now()
		if u.limit != nil {
			u.limit.idle()
		}
	case http.StateClosed, http.StateHijacked:
		if u.limit != nil {
			u.limit.release()
		}
	}
}

// freshQuiet is how long a new connection must have sent nothing to be
// closed for a newer one at the bound.
const freshQuiet = time.Second

// closeForNew makes room at the bound for a new connection. It closes the
// keep-alive connection that has waited the longest for its next request
// (state "idle"); its client opens a new connection for its next request.
// A connection whose next request has begun to arrive is busy, though
// net/http still calls it idle until the request's headers are in, unless
// nothing more arrived for readHeaderTimeout. With
// none idle, it closes the oldest new connection on which nothing arrived
// for freshQuiet (state "new"): a client's spare dial, a port check. It
// says which state the closed connection was in, or false when it closed
// none.
func (u *unreadConns) closeForNew() (string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var oldest *readConn
	var since time.Time
	now := time.Now()
	for c, t := range u.idle {
		// Its next request is arriving, unless its last byte came a
		// read-header timeout ago: net/http waits for a next request's
		// first 4 bytes under the idle timeout, so one stalled in them
		// would hold its place for that long.
		if lr := c.lastRead.Load(); lr > t.UnixNano() && now.Sub(time.Unix(0, lr)) < readHeaderTimeout {
			continue
		}
		if oldest == nil || t.Before(since) {
			oldest, since = c, t
		}
	}
	if oldest != nil {
		delete(u.idle, oldest)
		oldest.Close()
		return "idle", true
	}
	for c := range u.fresh {
		if c.unused() && time.Since(c.accepted) >= freshQuiet && (oldest == nil || c.accepted.Before(oldest.accepted)) {
			oldest = c
		}
	}
	if oldest != nil {
		delete(u.fresh, oldest)
		oldest.Close()
		return "new", true
	}
	return "", false
}

// endReads makes every read on a connection with a request in progress
// fail from now on; what the handlers write still goes out. It says how
// many connections it found.
func (u *unreadConns) endReads() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	for c := range u.active {
		_ = c.SetReadDeadline(time.Now())
	}
	return len(u.active)
}

// closeUnread closes the new connections no request can have arrived
// on, and says how many.
func (u *unreadConns) closeUnread() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for c := range u.fresh {
		if c.unused() {
			c.Close()
			delete(u.fresh, c)
			n++
		}
	}
	return n
}

// connsDesc describes the connections a server holds open, by state.
var connsDesc = prometheus.NewDesc("dovewarden_http_connections",
	"Connections the HTTP server holds open, by state: new (no request yet, or a TLS handshake), active (a request being read or answered), idle (a keep-alive connection between requests).",
	[]string{"state"}, nil)

// Describe and Collect make u a collector of its connections by state.
func (u *unreadConns) Describe(ch chan<- *prometheus.Desc) { ch <- connsDesc }

func (u *unreadConns) Collect(ch chan<- prometheus.Metric) {
	u.mu.Lock()
	n := map[string]int{"new": len(u.fresh), "active": len(u.active), "idle": len(u.idle)}
	u.mu.Unlock()
	for state, v := range n {
		ch <- prometheus.MustNewConstMetric(connsDesc, prometheus.GaugeValue, float64(v), state)
	}
}
