package main

import (
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
)

// TestListen_LocalAndBrokerDefaultToLoopback: the two roles that never run
// on Knative serve only this machine unless told otherwise. Without
// credentials, anyone who reaches local's listener can post changes, ask
// for a full sync of any user at its broker ingress and read /status (user
// names, errors); the standalone broker asks for no credentials at all.
// Dovecot's events snippet and the systemd unit's environment file post
// to 127.0.0.1:8080 anyway.
func TestListen_LocalAndBrokerDefaultToLoopback(t *testing.T) {
	for command, want := range map[string]string{"local": "127.0.0.1:8080", "broker": "127.0.0.1:8090"} {
		if got := flagsOf(t, command).Lookup("listen").DefValue; got != want {
			t.Errorf("%s --listen defaults to %q, want %q", command, got, want)
		}
	}
	// The Knative roles keep serving every interface (Knative's
	// queue-proxy reaches them from outside the container).
	for _, command := range []string{"ingest", "sync"} {
		if got := flagsOf(t, command).Lookup("listen").DefValue; got != ":8080" {
			t.Errorf("%s --listen defaults to %q, want :8080", command, got)
		}
	}
}

// TestWarnOpenListener: a listener that other hosts can reach, without
// credentials, is named in a warning at start; a loopback one, or one
// with credentials, is not.
func TestWarnOpenListener(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		auth bool
		warn bool
	}{
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}, false, true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 8080}, false, true},
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 8080}, false, true},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}, true, false},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 8080}, false, false},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 8080}, false, false},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, false, false},
	} {
		var buf safebuf.Buffer
		warnOpenListener(slog.New(slog.NewTextHandler(&buf, nil)), tc.addr, tc.auth, "the test's endpoints", "the fix")
		if got := strings.Contains(buf.String(), "level=WARN"); got != tc.warn {
			t.Errorf("%v auth=%v: warned %v, want %v: %s", tc.addr, tc.auth, got, tc.warn, buf.String())
		}
		if tc.warn && !strings.Contains(buf.String(), "the test's endpoints") {
			t.Errorf("%v: the warning does not say what is open: %s", tc.addr, buf.String())
		}
	}
}
