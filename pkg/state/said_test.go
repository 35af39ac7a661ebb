package state

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
)

// pipeDial dials over net.Pipe through firstWords' hook and returns the
// client's connection and the server's end.
func pipeDial(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	c, err := firstWords{}.DialHook(func(context.Context, string, string) (net.Conn, error) { return client, nil })(context.Background(), "tcp", "x")
	if err != nil {
		t.Fatal(err)
	}
	return c, server
}

// roundTrip writes a command on c and reads the answer the server sends.
func roundTrip(t *testing.T, c, server net.Conn, answer string) {
	t.Helper()
	go func() {
		buf := make([]byte, 64)
		server.Read(buf)
		server.Write([]byte(answer))
	}()
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != answer {
		t.Fatalf("read %q %v, want %q", buf[:n], err, answer)
	}
}

// A write that fails after an error was the only answer says it.
func TestSaidConn_RefusalIsInTheWriteError(t *testing.T) {
	c, server := pipeDial(t)
	roundTrip(t, c, server, "-DENIED Redis is running in protected mode\r\n")
	server.Close()
	_, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	if err == nil || !strings.Contains(err.Error(), `(Redis refused the connection: "DENIED Redis is running in protected mode")`) {
		t.Fatalf("write after the refusal: %v", err)
	}
	// The write's own error is still found in it.
	if !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("errors.Is(%v, io.ErrClosedPipe) is false", err)
	}
}

// A connection that went on answering (a Redis before 6.0 refuses
// HELLO, then serves) does not blame a later failed write on that first
// error; nor does one whose first answer was no error.
func TestSaidConn_AliveConnectionSaysNothing(t *testing.T) {
	for name, answers := range map[string][]string{
		"HELLO refused, then served": {"-ERR unknown command 'HELLO'\r\n", "+OK\r\n"},
		"first answer fine":          {"+OK\r\n"},
	} {
		t.Run(name, func(t *testing.T) {
			c, server := pipeDial(t)
			for _, a := range answers {
				roundTrip(t, c, server, a)
			}
			server.Close()
			_, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n"))
			if err == nil || strings.Contains(err.Error(), "refused") {
				t.Fatalf("write after the server closed: %v, want the write's own error", err)
			}
		})
	}
}

// go-redis finds the socket of a pooled connection to check its health:
// through the wrapper as without it.
func TestSaidConn_ShowsTheSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := firstWords{}.DialHook(func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	})(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(syscall.Conn); !ok {
		t.Error("a TCP connection's wrapper is no syscall.Conn")
	}
	if nc, ok := c.(interface{ NetConn() net.Conn }); !ok || nc.NetConn() == nil {
		t.Error("the wrapper gives no NetConn")
	}
	p, _ := pipeDial(t)
	if _, ok := p.(syscall.Conn); ok {
		t.Error("a wrapper of a connection without a socket claims one")
	}
}

// Redis's close may show as the end of the next read rather than a failed
// write (the write went out before the close came back): that says it
// too, and is still io.EOF to go-redis, which retries on it.
func TestSaidConn_RefusalIsInTheReadError(t *testing.T) {
	c, server := pipeDial(t)
	roundTrip(t, c, server, "-ERR max number of clients reached\r\n")
	go func() {
		buf := make([]byte, 64)
		server.Read(buf)
		server.Close()
	}()
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 64))
	if err == nil || !strings.Contains(err.Error(), `(Redis refused the connection: "ERR max number of clients reached")`) {
		t.Fatalf("read after the refusal: %v", err)
	}
	if !errors.Is(err, io.EOF) {
		t.Errorf("errors.Is(%v, io.EOF) is false", err)
	}
}
