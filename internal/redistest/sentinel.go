package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel is a Redis Sentinel (redis-server --sentinel) watching one
// primary under a master name, with a quorum of one. The Sentinel of a TLS
// primary speaks TLS with the primary's files.
type Sentinel struct {
	// Addr is "127.0.0.1:port".
	Addr string
	// Master is the name the primary is watched under.
	Master string
	// TLS is the primary's, when it speaks TLS.
	TLS *TLSFiles
	c   *redis.SentinelClient
	p   *process
}

// URL is the redis:// (with TLS rediss://) URL a go-redis failover client
// (and dovewarden's --redis-url) uses to find the primary through this
// Sentinel.
func (s *Sentinel) URL() string {
	scheme := "redis://"
	if s.TLS != nil {
		scheme = "rediss://"
	}
	return scheme + s.Addr + "/0?master_name=" + s.Master
}

// StartSentinel starts a Sentinel for t that watches primary as master,
// and stops it when t ends. Replicas of primary are found by the
// Sentinel itself.
func StartSentinel(t testing.TB, primary *Server, master string) *Sentinel {
	t.Helper()
	bin := binary(t)
	return tryStart(t, func() (*Sentinel, error) { return startSentinel(bin, t.TempDir(), primary, master) })
}

func startSentinel(bin, dir string, primary *Server, master string) (*Sentinel, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host, pport, _ := net.SplitHostPort(primary.Addr)
	conf := filepath.Join(dir, "sentinel.conf")
	// Short timeouts: a test fails over in seconds, not minutes.
	text := fmt.Sprintf("port %[1]d\nbind 127.0.0.1\ndaemonize no\ndir %[2]s\nloglevel warning\n"+
		"sentinel monitor %[3]s %[4]s %[5]s 1\nsentinel down-after-milliseconds %[3]s 1000\n"+
		"sentinel failover-timeout %[3]s 10000\n", port, dir, master, host, pport)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	args := []string{conf, "--sentinel"}
	if primary.TLS != nil {
		args = append(args, primary.TLS.serverArgs(port)...)
		args = append(args, "--tls-replication", "yes")
	}
	p, err := launch(bin, args)
	if err != nil {
		return nil, fmt.Errorf("sentinel: %w", err)
	}
	s := &Sentinel{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Master: master, TLS: primary.TLS, p: p}
	o := &redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond}
	if s.TLS != nil {
		if o.TLSConfig, err = s.TLS.Config(); err != nil {
			p.stop()
			return nil, err
		}
	}
	s.c = redis.NewSentinelClient(o)
	err = waitFor(10*time.Second, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("sentinel on port %d exited: %s", port, strings.TrimSpace(p.out.String()))
		default:
		}
		_, err := s.MasterAddr(context.Background())
		return err
	})
	if err == nil {
		// Another process may have bound the port between freePort and
		// the launch: its answer is not this Sentinel's.
		c := redis.NewClient(o)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err = p.answers(ctx, c); err != nil {
			err = fmt.Errorf("sentinel on port %d: %w", port, err)
		}
		cancel()
		c.Close()
	}
	if err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// stop stops the Sentinel and closes the client that watches it.
func (s *Sentinel) stop() {
	s.c.Close()
	s.p.stop()
}

// MasterAddr is the primary's address as the Sentinel knows it.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	a, err := s.c.GetMasterAddrByName(ctx, s.Master).Result()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(a[0], a[1]), nil
}

// Failover makes the Sentinel promote a replica (SENTINEL FAILOVER, no
// agreement needed) and waits until it names another primary than
// before, which it returns. The Sentinel learns of replicas from the
// primary within seconds of starting; until then it is retried.
func (s *Sentinel) Failover(ctx context.Context) (string, error) {
	before, err := s.MasterAddr(ctx)
	if err != nil {
		return "", err
	}
	if err := waitFor(20*time.Second, func() error { return s.c.Failover(ctx, s.Master).Err() }); err != nil {
		return "", fmt.Errorf("SENTINEL FAILOVER: %w", err)
	}
	var after string
	err = waitFor(20*time.Second, func() error {
		a, err := s.MasterAddr(ctx)
		if err != nil {
			return err
		}
		if a == before {
			return fmt.Errorf("the primary is still %s", a)
		}
		after = a
		return nil
	})
	return after, err
}

// waitFor calls f every 50 ms until it returns nil or limit passes, and
// returns its last error.
func waitFor(limit time.Duration, f func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
