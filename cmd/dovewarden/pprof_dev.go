//go:build pprof

// Profiling for benchmarks: a binary built with -tags pprof serves
// net/http/pprof on the address in DOVEWARDEN_PPROF_ADDR (loopback only,
// never in a release build). docs/benchmarks.md shows how it is used.
package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	addr := os.Getenv("DOVEWARDEN_PPROF_ADDR")
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pprof:", err)
		return
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		fmt.Fprintln(os.Stderr, "pprof: DOVEWARDEN_PPROF_ADDR must be a loopback address")
		ln.Close()
		return
	}
	go http.Serve(ln, nil) //nolint:errcheck // a profiling aid
}
