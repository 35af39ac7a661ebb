package redistest

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestStart_ServesAndIsolates(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr == b.Addr {
		t.Fatalf("two servers on %s", a.Addr)
	}
	ctx := context.Background()
	ca, cb := a.Client(t), b.Client(t)
	if err := ca.Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := cb.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("second server sees the first's key: %d, %v", n, err)
	}
	if v, err := ca.Do(ctx, "TIME").Slice(); err != nil || len(v) != 2 {
		t.Fatalf("TIME: %v %v", v, err)
	}
}

func TestStartWith_TLSRequiresTheCAAndAClientCertificate(t *testing.T) {
	s := StartWith(t, Options{TLS: true})
	ctx := context.Background()
	if err := s.Client(t).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("with the CA and a client certificate: %v", err)
	}
	plain := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer plain.Close()
	if err := plain.Ping(ctx).Err(); err == nil {
		t.Fatal("a plain connection was answered")
	}
	tc, err := s.TLS.Config()
	if err != nil {
		t.Fatal(err)
	}
	tc.Certificates = nil
	noCert := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: tc, MaxRetries: -1})
	defer noCert.Close()
	if err := noCert.Ping(ctx).Err(); err == nil {
		t.Fatal("a client without a certificate was answered")
	}
}

func TestSentinel_FailsOverToTheReplica(t *testing.T) {
	primary := StartWith(t, Options{})
	replica := StartWith(t, Options{ReplicaOf: primary})
	s := StartSentinel(t, primary, "dw")
	ctx := context.Background()
	if a, err := s.MasterAddr(ctx); err != nil || a != primary.Addr {
		t.Fatalf("primary before: %q, %v; want %s", a, err, primary.Addr)
	}
	after, err := s.Failover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after != replica.Addr {
		t.Fatalf("primary after: %s, want the replica %s", after, replica.Addr)
	}
}

func TestSentinel_TLS(t *testing.T) {
	primary := StartWith(t, Options{TLS: true})
	replica := StartWith(t, Options{ReplicaOf: primary})
	s := StartSentinel(t, primary, "dw")
	ctx := context.Background()
	if err := primary.Client(t).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := primary.Client(t).Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the TLS replica: %d, %v", n, err)
	}
	after, err := s.Failover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after != replica.Addr {
		t.Fatalf("primary after: %s, want the replica %s", after, replica.Addr)
	}
	if v, err := replica.Client(t).Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("the new primary's k: %q, %v", v, err)
	}
}
