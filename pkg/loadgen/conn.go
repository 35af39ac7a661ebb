package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// httpConn is one worker's HTTP/1.1 connection to the target, used the way
// Dovecot's exporter uses its connections: keep-alive, one request in flight,
// the request written whole and then the response read whole. It follows no
// redirects (a 3xx counts as that status) and uses no proxy (a proxy would
// both defeat the loopback check and add its own latency).
//
// It replaces http.Client on purpose. The Transport spends most of
// loadgen's CPU per request on machinery a single-request-in-flight sender
// does not need (a read and a write goroutine per connection and channels
// between them, a request copy and a timer context per request), and
// loadgen shares the machine with the receiver it measures. The protocol
// parts stay net/http's own: http.ReadResponse parses the answer (status
// line, headers, Content-Length, chunked or close-delimited bodies, whether
// the connection may be kept), and http.Header.Write renders the request's
// headers, once per run. The per-request timeout is a deadline on the
// socket; canceling the run moves that deadline into the past.
type httpConn struct {
	url   string      // the target, password and query tokens redacted, for error messages
	addrs []string    // host:port to dial, tried in order
	tls   *tls.Config // nil for http
	head  []byte      // request line and headers up to "Content-Length: "

	nc     net.Conn // nil until dialed and after a failure
	br     *bufio.Reader
	out    []byte      // the request being written
	reused bool        // nc has already carried a request
	stop   func() bool // unregisters the cancel hook of nc
}

// dialTarget returns the addresses to dial for u, the approved ones with
// u's port (u's host itself when none are given), and, for https, the TLS
// configuration (certificates verified for u's host name, as the default
// Transport does).
func dialTarget(u *url.URL, approved []netip.Addr) ([]string, *tls.Config) {
	port := u.Port()
	var conf *tls.Config
	if u.Scheme == "https" {
		conf = &tls.Config{ServerName: u.Hostname()}
		if port == "" {
			port = "443"
		}
	} else if port == "" {
		port = "80"
	}
	if len(approved) == 0 {
		return []string{net.JoinHostPort(u.Hostname(), port)}, conf
	}
	addrs := make([]string, len(approved))
	for i, a := range approved {
		addrs[i] = net.JoinHostPort(a.String(), port)
	}
	return addrs, conf
}

// requestHead renders everything of a POST to u with header that does not
// depend on the body: the request line, Host, header, and the name of the
// Content-Length header, whose value and the body each request appends.
func requestHead(header http.Header, u *url.URL) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\n", u.RequestURI(), u.Host)
	header.Write(&b) // a bytes.Buffer does not fail
	b.WriteString("Content-Length: ")
	return b.Bytes()
}

// aLongTimeAgo is a deadline that has passed, to interrupt a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// max1xx bounds the informational answers skipped before the final one,
// as net/http's Transport does.
const max1xx = 5

// roundTrip posts body and reads the whole answer before deadline (dialing
// included). A connection the server closed while it was
// idle is noticed only when the next request fails on it, before any byte
// of an answer: that request is sent again, once, on a fresh connection (as
// fasthttp does for POSTs; net/http's Transport notices such closes with a
// goroutine reading every idle connection, which is what costs). Any other
// failure, and an answer that says the connection ends, closes the
// connection; the next request dials a new one.
func (c *httpConn) roundTrip(ctx context.Context, body []byte, deadline time.Time) (*http.Response, error) {
	c.out = strconv.AppendInt(append(c.out[:0], c.head...), int64(len(body)), 10)
	c.out = append(append(c.out, "\r\n\r\n"...), body...)
	for {
		reused := c.nc != nil && c.reused
		resp, unanswered, err := c.exchange(ctx, deadline)
		if err == nil {
			return resp, nil
		}
		c.close()
		if !reused || !unanswered || ctx.Err() != nil {
			return nil, err
		}
	}
}

// exchange sends c.out on the connection, dialing one first if needed, and
// reads the answer. unanswered says the error came before any byte of an
// answer and was not a timeout: the server closed or reset the connection.
func (c *httpConn) exchange(ctx context.Context, deadline time.Time) (resp *http.Response, unanswered bool, err error) {
	if c.nc == nil {
		if err := c.dial(ctx, deadline); err != nil {
			return nil, false, err
		}
	} else if err := c.nc.SetDeadline(deadline); err != nil {
		return nil, false, err
	}
	// After the deadline is set, so a cancel either shows here or moves the
	// deadline after this.
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	c.reused = true
	if _, err := c.nc.Write(c.out); err != nil {
		return nil, closedByPeer(err), err
	}
	if _, err := c.br.Peek(1); err != nil {
		return nil, closedByPeer(err), err
	}
	resp, err = http.ReadResponse(c.br, nil)
	for n := 0; err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols; n++ {
		if n == max1xx {
			return nil, false, errors.New("too many 1xx informational responses")
		}
		resp, err = http.ReadResponse(c.br, nil)
	}
	if err != nil {
		return nil, false, err
	}
	// Read the whole body, so the next answer starts at the next byte.
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, false, err
	}
	if resp.Close || resp.StatusCode == http.StatusSwitchingProtocols {
		c.close()
	}
	return resp, false, nil
}

// closedByPeer says err is the peer closing or resetting the connection.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *httpConn) dial(ctx context.Context, deadline time.Time) error {
	d := net.Dialer{Deadline: deadline, KeepAlive: 30 * time.Second}
	var nc net.Conn
	var err error
	for _, addr := range c.addrs {
		if nc, err = d.DialContext(ctx, "tcp", addr); err == nil {
			break
		}
	}
	if err != nil {
		return err
	}
	if err := nc.SetDeadline(deadline); err != nil {
		nc.Close()
		return err
	}
	if c.tls != nil {
		tc := tls.Client(nc, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return err
		}
		nc = tc
	}
	c.nc, c.reused = nc, false
	c.stop = context.AfterFunc(ctx, func() { nc.SetDeadline(aLongTimeAgo) })
	if c.br == nil {
		c.br = bufio.NewReader(nc)
	} else {
		c.br.Reset(nc)
	}
	return nil
}

// close drops the connection, if any; the next request dials anew.
func (c *httpConn) close() {
	if c.nc == nil {
		return
	}
	c.stop()
	c.nc.Close()
	c.nc, c.stop = nil, nil
}
