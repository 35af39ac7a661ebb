package syncer

import (
	"flag"
	"strings"
	"testing"
	"time"
)

var minimalEnv = map[string]string{
	"DOVEWARDEN_REDIS_URL": "redis://r:6379", "DOVEWARDEN_DOVEADM_URL": "http://mail-a:8080/doveadm/v1",
	"DOVEWARDEN_DOVEADM_PASSWORD": "pa", "DOVEWARDEN_DESTINATION": "tcp:mail-b:12345",
}

func withEnv(extra map[string]string) func(string) string {
	m := map[string]string{}
	for k, v := range minimalEnv {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	return env(m)
}

func TestLoad_SweepDefaultsLikeDovecot(t *testing.T) {
	c, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, withEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := SweepConfig{FullSyncInterval: 24 * time.Hour, FailedRetryInterval: 5 * time.Minute, BatchSize: 500,
		BatchInterval: time.Second, Budget: 20 * time.Second, LockTTL: 5 * time.Minute, List: "userdb"}
	if c.Sweep != want {
		t.Errorf("sweep %+v, want %+v", c.Sweep, want)
	}
	c, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), []string{"--full-sync-interval=0", "--sweep-batch-size=50"}, withEnv(map[string]string{
		"DOVEWARDEN_SWEEP_BUDGET": "10s", "DOVEWARDEN_SWEEP_LOCK_TTL": "1m", "DOVEWARDEN_SWEEP_LIST": "known",
	}))
	if err != nil || c.Sweep.FullSyncInterval != 0 || c.Sweep.BatchSize != 50 || c.Sweep.Budget != 10*time.Second || c.Sweep.LockTTL != time.Minute ||
		c.Sweep.List != "known" || c.Sweep.options().List != "known" {
		t.Errorf("sweep %+v, %v", c.Sweep, err)
	}
}

func TestLoad_SweepErrorsNameTheSetting(t *testing.T) {
	_, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, withEnv(map[string]string{
		"DOVEWARDEN_REQUEST_TIMEOUT":       "25s",
		"DOVEWARDEN_WRITE_TIMEOUT":         "30s",
		"DOVEWARDEN_DSYNC_TIMEOUT":         "20s",
		"DOVEWARDEN_SWEEP_BUDGET":          "26s",
		"DOVEWARDEN_SWEEP_BATCH_SIZE":      "0",
		"DOVEWARDEN_SWEEP_BATCH_INTERVAL":  "20s",
		"DOVEWARDEN_SWEEP_LOCK_TTL":        "30s",
		"DOVEWARDEN_FULL_SYNC_INTERVAL":    "-1h",
		"DOVEWARDEN_FAILED_RETRY_INTERVAL": "5ms",
		"DOVEWARDEN_SWEEP_LIST":            "ldap",
	}))
	for _, want := range []string{`sweep-list "ldap"`, "sweep-budget 26s", "sweep-batch-size 0", "sweep-batch-interval 20s", "sweep-lock-ttl 30s",
		"full-sync-interval -1h", "failed-retry-interval 5ms: want at least 1s"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

// A lock TTL of hours where seconds were meant is refused: a dead
// owner's lock, or a sweep whose continuation got lost, would hold its
// user, or every sweep, that long.
func TestLoad_LockTTLsHaveAnUpperBound(t *testing.T) {
	base := map[string]string{"DOVEWARDEN_LOCK_TTL": "1h", "DOVEWARDEN_SWEEP_LOCK_TTL": "24h"}
	if _, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, withEnv(base)); err != nil {
		t.Fatalf("the largest TTLs taken: %v", err)
	}
	_, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, withEnv(map[string]string{
		"DOVEWARDEN_LOCK_TTL": "100000h", "DOVEWARDEN_SWEEP_LOCK_TTL": "24h1s"}))
	for _, want := range []string{"lock-ttl 100000h0m0s: want at most 1h0m0s", "sweep-lock-ttl 24h0m1s: want at most 24h"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}
