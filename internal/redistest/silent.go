package redistest

import (
	"net"
	"testing"
)

// Silent listens on a loopback address until the test ends, taking
// connections and never answering (a Redis blackholed or paused), and
// returns the address.
func Silent(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing
		}
	}()
	return ln.Addr().String()
}
