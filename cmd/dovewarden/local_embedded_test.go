package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// listeningPorts returns the TCP ports this process listens on at
// 127.0.0.1 (from /proc: the sockets among its own descriptors).
func listeningPorts(t *testing.T) map[int]bool {
	t.Helper()
	ours := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list this process's sockets: %v", err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			ours[strings.TrimSuffix(inode, "]")] = true
		}
	}
	f, err := os.Open("/proc/self/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ports := map[int]bool{}
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st ... inode: 0100007F:1F90 is
		// 127.0.0.1:8080, st 0A is LISTEN.
		col := strings.Fields(sc.Text())
		if len(col) < 10 || col[3] != "0A" || !ours[col[9]] {
			continue
		}
		ip, port, _ := strings.Cut(col[1], ":")
		if p, err := strconv.ParseUint(port, 16, 16); err == nil && ip == "0100007F" {
			ports[int(p)] = true
		}
	}
	return ports
}

// TestLocal_EmbeddedRedisAsksForAPassword: the embedded Redis listens on
// loopback, where any user of the machine can connect; without the
// process's random password it answers nothing but NOAUTH, and local mode
// itself works through it.
func TestLocal_EmbeddedRedisAsksForAPassword(t *testing.T) {
	before := listeningPorts(t)
	env, _, stderr := testEnv(map[string]string{"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password}, "")
	base, _ := serve(t, env, stderr, "local", "--listen", "127.0.0.1:0",
		"--doveadm-url", "http://127.0.0.1:1/doveadm/v1", "--destination", "tcp:127.0.0.1:1")
	var redisPorts []int
	for p := range listeningPorts(t) {
		if !before[p] && !strings.HasSuffix(base, fmt.Sprintf(":%d", p)) {
			redisPorts = append(redisPorts, p)
		}
	}
	if len(redisPorts) != 1 {
		t.Fatalf("new loopback listeners besides %s: %v, want the embedded Redis's alone", base, redisPorts)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", redisPorts[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, password := range []string{"", "guess"} {
		rdb := redis.NewClient(&redis.Options{Addr: addr, Password: password, MaxRetries: -1})
		err := rdb.Set(ctx, "dovewarden:excluded", "x", 0).Err()
		rdb.Close()
		if err == nil || !strings.Contains(err.Error(), "NOAUTH") && !strings.Contains(err.Error(), "WRONGPASS") {
			t.Errorf("embedded Redis with password %q: %v, want it refused", password, err)
		}
	}
	// The process itself uses it: the status answers from that Redis
	// (an error there is a 503).
	resp, err := http.Get(base + "/status/alice")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status of alice: HTTP %d, want 200 from the embedded Redis\n%s", resp.StatusCode, stderr)
	}
}

// TestProcessClock_NeverBeforeTheMark: local mode stamps changes with its
// own clock, never before the latest attempt start its sync scripts
// recorded (state.LatestStart), as state.Store.Now does with a Redis
// server.
func TestProcessClock_NeverBeforeTheMark(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	// An attempt that starts 200 ms ahead of this process's clock, as
	// after a step back of the clock.
	ahead := time.Now().Add(200 * time.Millisecond).Truncate(time.Millisecond)
	mr.SetTime(ahead)
	c, err := state.New(rdb).Begin(context.Background(), state.BeginArgs{User: "clock-test", Token: "t", Destination: "d", TTL: time.Second})
	if err != nil || c.Decision != state.Run || !c.Start.Equal(ahead) {
		t.Fatalf("begin: %+v, %v", c, err)
	}
	now, err := processClock{}.Now(context.Background())
	if err != nil || now.Before(ahead) || now.Nanosecond()%int(time.Millisecond) != 0 {
		t.Errorf("Now() = %v, %v; want milliseconds, not before the attempt's start %v", now, err, ahead)
	}
}

// TestStartLoopback_TakesTheNextAddress: the embedded Redis listens on the
// first loopback address the host has (IPv4's, or else IPv6's), so that
// local mode starts on a host with only ::1.
func TestStartLoopback_TakesTheNextAddress(t *testing.T) {
	mr := miniredis.NewMiniRedis()
	defer mr.Close()
	// 203.0.113.1 and 198.51.100.1 (TEST-NET-3 and -2, for
	// documentation) are no address of this host.
	if err := startLoopback(mr, "203.0.113.1:0", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(mr.Addr(), "127.0.0.1:") {
		t.Errorf("listening on %s, want the second address", mr.Addr())
	}
	mr2 := miniredis.NewMiniRedis()
	defer mr2.Close()
	if err := startLoopback(mr2, "203.0.113.1:0", "198.51.100.1:0"); err == nil || !strings.Contains(err.Error(), "198.51.100.1") {
		t.Errorf("no address to listen on: %v, want the errors of each", err)
	}
}

// embeddedRedis starts local mode's embedded Redis for locks of minTTL
// until the test ends, and returns a client of it.
func embeddedRedis(t *testing.T, minTTL time.Duration) *redis.Client {
	t.Helper()
	url, stop, err := startEmbeddedRedis(minTTL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestStartEmbeddedRedis_KeysExpire: the embedded Redis's keys expire by
// their TTL as a real server's do (miniredis lowers TTLs only when told):
// a dead owner's user lock, the sweep's lock and claims rely on it.
func TestStartEmbeddedRedis_KeysExpire(t *testing.T) {
	c := embeddedRedis(t, 160*time.Millisecond)
	ctx := context.Background()
	for key, ttl := range map[string]time.Duration{"lock:short": 300 * time.Millisecond, "lock:long": time.Hour, "record": 0} {
		if err := c.Set(ctx, key, "v", ttl).Err(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Exists(ctx, "lock:short").Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatalf("a key with a TTL of 300ms still there after 10s (TTL %v)", c.PTTL(ctx, "lock:short").Val())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := c.Exists(ctx, "lock:long", "record").Val(); n != 2 {
		t.Errorf("keys with a long TTL or none: %d of 2 left", n)
	}
	if ttl := c.PTTL(ctx, "lock:long").Val(); ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("TTL of an hour now %v", ttl)
	}
}

// TestExpirer_ALateLoweringTakesOffNoMoreThanItsInterval: a lowering due
// 100 ms after the last comes 400 ms after it (the process was busy). A
// lock set 5 ms before it has lost those 5 ms, and at most the 100 ms
// interval: not the 400 ms, which cut a 900 ms lock below the five
// sixths of its TTL its owner counts on.
func TestExpirer_ALateLoweringTakesOffNoMoreThanItsInterval(t *testing.T) {
	mr := miniredis.RunT(t)
	t0 := time.Now()
	e := &expirer{mr: mr, last: t0, next: 100 * time.Millisecond}
	mr.Set("lock", "owner")
	mr.SetTTL("lock", 900*time.Millisecond)
	mr.Set("old", "v")
	mr.SetTTL("old", time.Hour)
	e.lower(t0.Add(400 * time.Millisecond))
	if ttl := mr.TTL("lock"); ttl < 900*time.Millisecond-100*time.Millisecond {
		t.Errorf("a 900ms lock set just before a lowering 300ms late has %v left; want at least 800ms", ttl)
	}
	// The next lowering, on time, takes off its interval.
	e.lower(t0.Add(500 * time.Millisecond))
	if ttl := mr.TTL("old"); ttl != time.Hour-200*time.Millisecond {
		t.Errorf("TTL of an hour after two lowerings of 100ms: %v", ttl)
	}
}

// BenchmarkEmbeddedRedisExpire: what lowering the embedded Redis's TTLs
// costs, once a second, with the keys of 10,000 and 100,000 users
// (a record and a dsync state each); commands wait meanwhile.
//
//	go test ./cmd/dovewarden -run '^$' -bench EmbeddedRedisExpire -benchtime 20x
func BenchmarkEmbeddedRedisExpire(b *testing.B) {
	for _, users := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(users), func(b *testing.B) {
			mr := miniredis.RunT(b)
			for i := range users {
				mr.Set("dovewarden:user:{u"+strconv.Itoa(i)+"}", "x")
				mr.HSet("dovewarden:dsync:{u"+strconv.Itoa(i)+"}", "tcp:replica:12345", "state")
			}
			b.ResetTimer()
			for range b.N {
				mr.FastForward(time.Second)
			}
		})
	}
}

// TestStartEmbeddedRedis_LocksLastWhileRenewed: a lowering of the TTLs
// takes off the time since the last one, also from a key set just before
// it; the lowerings come often enough that a lock lives the five sixths
// of its TTL sync counts on, and one renewed every third of its TTL (as
// sync renews a user's) is never lost. A check that came after five
// sixths of the TTL (the test itself ran late, on a busy machine) tells
// nothing and is not counted.
func TestStartEmbeddedRedis_LocksLastWhileRenewed(t *testing.T) {
	const ttl = 900 * time.Millisecond
	const counted = ttl - ttl/6
	c := embeddedRedis(t, ttl)
	ctx := context.Background()

	// Locks taken at 20 moments spread over a lowering's interval.
	errs := make(chan error, 20)
	var late atomic.Int32
	for i := range 20 {
		go func() {
			time.Sleep(time.Duration(i) * 7 * time.Millisecond)
			key := "lock:" + strconv.Itoa(i)
			set := time.Now()
			if err := c.Set(ctx, key, "owner", ttl).Err(); err != nil {
				errs <- err
				return
			}
			time.Sleep(ttl * 3 / 4)
			gone := c.Exists(ctx, key).Val() != 1
			switch age := time.Since(set); {
			case age >= counted:
				late.Add(1)
			case gone:
				errs <- fmt.Errorf("%s gone at most %v after it was set, within five sixths of its TTL", key, age)
				return
			}
			errs <- nil
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if late.Load() > 0 {
		t.Logf("%d of 20 checks came after five sixths of the TTL: not counted", late.Load())
	}

	renewed := 0
	renew := time.Now()
	if err := c.Set(ctx, "lock:renewed", "owner", ttl).Err(); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		time.Sleep(ttl / 3)
		ok, err := c.PExpire(ctx, "lock:renewed", ttl).Result()
		switch age := time.Since(renew); {
		case err != nil:
			t.Fatal(err)
		case !ok && age < counted:
			t.Fatalf("a lock renewed every third of its TTL is gone %v after its last renewal", age)
		case !ok: // the renewal came too late to tell: take it again
			if err := c.Set(ctx, "lock:renewed", "owner", ttl).Err(); err != nil {
				t.Fatal(err)
			}
		default:
			renewed++
		}
		renew = time.Now()
	}
	if late.Load() == 20 && renewed == 0 {
		t.Skip("every check came after five sixths of the TTL (the machine is too busy): nothing was shown")
	}
}

// TestLocal_EmbeddedSweepAtStartWithoutFullSyncs: with the embedded Redis
// every start knows no user, so the sweep at start must replicate every
// user (docs/local.md) also when periodic full syncs are off: it may not
// rest on a full sync being due, which --full-sync-interval 0 never makes.
func TestLocal_EmbeddedSweepAtStartWithoutFullSyncs(t *testing.T) {
	base, stop, tr, stderr := startLocal(t, []string{"u1", "u2"}, "--full-sync-interval", "0")
	t.Cleanup(func() { _ = stop() })
	for deadline := time.Now().Add(10 * time.Second); len(tr.CallsOf("u1")) == 0 || len(tr.CallsOf("u2")) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the sweep at start replicated u1 %d and u2 %d times, want each at least once:\n%s", len(tr.CallsOf("u1")), len(tr.CallsOf("u2")), stderr)
		}
	}
	// The sweep step records its counts after the Broker took its batch,
	// so a dsync it asked for can come first: the status is read until
	// they are there.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(base + "/status")
		if err != nil {
			t.Fatal(err)
		}
		var o overview
		err = json.NewDecoder(resp.Body).Decode(&o)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !o.Users.Recovery.IsZero() && o.Sweep.Counts["requested_recovery"] == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("users %+v, sweep counts %v: want the start's recovery time, and both users requested for it", o.Users, o.Sweep.Counts)
		}
	}
}
