// Package loadgen posts realistic Dovecot event-exporter requests to an
// ingest URL and measures how the receiver copes: how many requests it
// accepted, which statuses it answered, and the latency distribution.
//
// It imitates what Dovecot's http-post exporter does: one JSON object per
// POST, keep-alive connections, one request in flight per connection, a short
// per-request timeout and no retries. The bodies come from a Generator that
// reproduces the shapes Dovecot 2.3 and 2.4 really send (see testdata/, which
// holds events captured from both versions).
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Defaults used for zero Config fields.
const (
	DefaultURL     = "http://127.0.0.1:8080/events"
	DefaultUsers   = 1000
	DefaultHosts   = 1
	DefaultTimeout = 250 * time.Millisecond // Dovecot's own exporter default

	// MaxConcurrency bounds Concurrency: each connection is a goroutine, a
	// socket and buffers, and far more than Dovecot's hosts would hold open
	// is a typo, not a test.
	MaxConcurrency = 10000
	// MaxRate bounds Rate: one request a nanosecond, the schedule's grain.
	MaxRate = 1e9
)

// Version selects which Dovecot release's event shapes the generator sends.
type Version string

// Supported Dovecot versions.
const (
	V23 Version = "2.3"
	V24 Version = "2.4"
)

// ParseVersion accepts "2.3" or "2.4".
func ParseVersion(s string) (Version, error) {
	switch v := Version(strings.TrimSpace(s)); v {
	case V23, V24:
		return v, nil
	}
	return "", fmt.Errorf("unsupported Dovecot version %q (want %s or %s)", s, V23, V24)
}

// Config describes one load run. Zero fields take the defaults above; Count
// and Duration may not both be zero, because an unbounded run against a
// shared ingest is almost always a mistake.
type Config struct {
	// URL receives the POSTs. Without AllowRemote its host must resolve to
	// loopback addresses only, so a typo cannot load-test a production host,
	// and those addresses are the ones dialed ("localhost" is 127.0.0.1 or
	// ::1, not resolved).
	URL string
	// Version picks the Dovecot 2.3 or 2.4 event shapes (default 2.4).
	Version Version
	// Users and Hosts size the populations events are spread over
	// (usernames loaduser0001.., hostnames mail-1.loadgen.test..).
	Users, Hosts int
	// Mix weights the kinds of event sent (default DefaultMix).
	Mix Mix
	// Rate is the target in requests per second over all connections;
	// 0 sends as fast as the receiver answers.
	Rate float64
	// Concurrency is the number of connections, each with one request in
	// flight, as Dovecot does (default 1).
	Concurrency int
	// Count stops the run after this many requests (0: no limit).
	Count uint64
	// Duration stops the run after this long (0: no limit).
	Duration time.Duration
	// Timeout bounds each request from when it was due (in an unpaced run,
	// from its send), as Dovecot's exporter timeout is absolute from when
	// the event was submitted: a request that waited behind slow answers
	// for longer is counted as a timeout without being sent.
	Timeout time.Duration
	// BasicAuth ("user:pass") or Token (bearer) authenticate the requests.
	BasicAuth, Token string
	// AllowRemote permits URLs that do not resolve to loopback only.
	AllowRemote bool
	// AllowErrors makes Run succeed even when requests failed.
	AllowErrors bool
	// Seed makes the sequence of events reproducible: event number i is the
	// same for a given seed whatever the concurrency (timestamps excepted).
	Seed uint64
}

// ErrRequestsFailed is wrapped by Run's error when some requests got no 2xx
// answer and AllowErrors is off; the Report is complete in that case.
var ErrRequestsFailed = errors.New("requests failed")

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.URL == "" {
		c.URL = DefaultURL
	}
	if c.Version == "" {
		c.Version = V24
	}
	if c.Users == 0 {
		c.Users = DefaultUsers
	}
	if c.Hosts == 0 {
		c.Hosts = DefaultHosts
	}
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Mix == nil {
		c.Mix = mustParseMix(DefaultMix)
	}
	return c
}

// validateEvents checks the settings the Generator uses.
func (c Config) validateEvents() error {
	var errs []error
	if _, err := ParseVersion(string(c.Version)); err != nil {
		errs = append(errs, fmt.Errorf("version: %w", err))
	}
	if c.Users < 1 {
		errs = append(errs, fmt.Errorf("users: %d, want at least 1", c.Users))
	}
	if c.Hosts < 1 {
		errs = append(errs, fmt.Errorf("hosts: %d, want at least 1", c.Hosts))
	}
	if err := c.Mix.validate(); err != nil {
		errs = append(errs, fmt.Errorf("mix: %w", err))
	}
	return errors.Join(errs...)
}

// validate checks a defaulted Config. Errors name the setting as the
// command line spells it.
func (c Config) validate() error {
	errs := []error{c.validateEvents()}
	if c.Concurrency < 1 || c.Concurrency > MaxConcurrency {
		errs = append(errs, fmt.Errorf("concurrency: %d, want 1 to %d", c.Concurrency, MaxConcurrency))
	}
	switch {
	case math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0):
		errs = append(errs, fmt.Errorf("rate: %g, want a finite number", c.Rate))
	case c.Rate < 0:
		errs = append(errs, fmt.Errorf("rate: %g is negative", c.Rate))
	case c.Rate > MaxRate:
		errs = append(errs, fmt.Errorf("rate: %g, want at most %g (one request a nanosecond)", c.Rate, float64(MaxRate)))
	}
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration: %s is negative", c.Duration))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout: %s is negative", c.Timeout))
	}
	if c.Count == 0 && c.Duration == 0 {
		errs = append(errs, errors.New("refusing to run unbounded: set count or duration"))
	}
	if c.BasicAuth != "" && c.Token != "" {
		errs = append(errs, errors.New("basic-auth and token: set one, not both"))
	}
	if c.BasicAuth != "" && !strings.Contains(c.BasicAuth, ":") {
		errs = append(errs, errors.New("basic-auth: want user:password"))
	}
	return errors.Join(errs...)
}

// lookupHost resolves a host name; tests replace it to stay off the network.
var lookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// loopbackNames are the addresses "localhost" stands for: it is not
// resolved, so a hosts file or a resolver's search domain cannot send the
// load elsewhere (RFC 6761 reserves the name for loopback).
var loopbackNames = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}

// checkTarget parses rawURL and, unless allowRemote, refuses hosts that are
// not (or do not resolve only to) 127.0.0.0/8 or ::1. It returns the
// addresses it approved, which are the ones to dial: resolving the name
// again when dialing could answer differently. With allowRemote it returns
// none and the name is dialed. Its errors show the URL without its
// password (a user and password in it are sent as Basic auth, as Dovecot's
// exporter sends those of its URL).
func checkTarget(ctx context.Context, rawURL string, allowRemote bool) (*url.URL, []netip.Addr, error) {
	shown := config.RedactURL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		// url.Parse's error quotes the URL, and its reason can quote a
		// part of the password ("invalid port").
		return nil, nil, fmt.Errorf("url %q: want an http or https URL", shown)
	}
	host := u.Hostname()
	if host == "" {
		return nil, nil, fmt.Errorf("url %q: no host", shown)
	}
	if allowRemote {
		return u, nil, nil
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if strings.EqualFold(host, "localhost") {
		addrs = loopbackNames
	} else {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		addrs, err = lookupHost(rctx, host)
		if err != nil {
			return nil, nil, fmt.Errorf("url %q: resolve %s: %w (use allow-remote to skip the loopback check)", shown, host, err)
		}
	}
	if len(addrs) == 0 {
		return nil, nil, fmt.Errorf("url %q: %s resolves to no address", shown, host)
	}
	for _, a := range addrs {
		if !a.Unmap().IsLoopback() {
			return nil, nil, fmt.Errorf("url %q: %s is not a loopback address; refusing to load-test a remote host without allow-remote", shown, a)
		}
	}
	return u, addrs, nil
}
