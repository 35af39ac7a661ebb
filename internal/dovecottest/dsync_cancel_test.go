package dovecottest_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestDsyncOutlivesItsHTTPRequest pins a fact the sync function's rules
// rest on (docs/sync.md, --dsync-lock-timeout): a dsync whose doveadm HTTP
// request is cut off (a stop, --request-timeout, --dsync-timeout) keeps
// running in Dovecot, after dovewarden has given up the user's Redis lock.
//
// The destination accepts the connection and never answers, so the dsync
// waits in its handshake until the test closes it.
func TestDsyncOutlivesItsHTTPRequest(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: map[string]string{"u1": "pass"}})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted <- c
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			out, err := a.DoveadmHTTP(ctx, fmt.Sprintf(`[["sync",{"user":"u1","destination":["tcp:%s"],"state":"","lockTimeout":30},"t1"]]`, ln.Addr()))
			cancel()
			if err == nil {
				t.Fatalf("the dsync answered %s; its destination never does", out)
			}
			var c net.Conn
			select {
			case c = <-accepted:
				t.Cleanup(func() { c.Close() })
			case <-time.After(5 * time.Second):
				t.Fatalf("the dsync never connected to its destination; log:\n%s", a.Log())
			}
			// It sends its handshake, then waits: still connected 3 s after
			// its request was cut off.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 4096)
			for {
				_, err := c.Read(buf)
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					return
				}
				if err != nil {
					t.Fatalf("the dsync let go of its destination after its request was cut off (%v): Dovecot now stops it, and docs/sync.md needs another look", err)
				}
			}
		})
	}
}
