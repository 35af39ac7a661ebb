package syncer

import (
	"flag"
	"fmt"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/sweep"
)

// SweepConfig holds the sweep's settings (docs/configuration.md, "sync").
type SweepConfig struct {
	// FullSyncInterval is Dovecot's replication_full_sync_interval; zero
	// turns periodic full syncs off.
	FullSyncInterval    time.Duration
	FailedRetryInterval time.Duration
	BatchSize           int
	BatchInterval       time.Duration
	// Budget bounds one sweep step, one request of the sync function.
	Budget  time.Duration
	LockTTL time.Duration
	// List is where a sweep's users come from: sweep.ListUserdb or
	// sweep.ListKnown.
	List string
}

func (c *SweepConfig) registerFlags(fs *flag.FlagSet) {
	d := sweep.Defaults
	fs.DurationVar(&c.FullSyncInterval, "full-sync-interval", d.FullSyncInterval, "the sweep asks for a full sync of a user whose last full sync is older (Dovecot's replication_full_sync_interval); 0: no periodic full syncs")
	fs.DurationVar(&c.FailedRetryInterval, "failed-retry-interval", d.FailedRetryInterval, "how long a user whose replication failed waits before the sweep retries it")
	fs.IntVar(&c.BatchSize, "sweep-batch-size", d.BatchSize, "replication requests one sweep step sends at most")
	fs.DurationVar(&c.BatchInterval, "sweep-batch-interval", d.BatchInterval, "pause after each sweep batch, inside its request, before the next is asked for")
	fs.DurationVar(&c.Budget, "sweep-budget", d.Budget, "time one sweep step (listing, or one batch) may take; at most request-timeout")
	fs.DurationVar(&c.LockTTL, "sweep-lock-ttl", d.LockTTL, "how long a sweep whose continuation was lost keeps others from starting")
	fs.StringVar(&c.List, "sweep-list", sweep.ListUserdb, "where a sweep's users come from: userdb (each Dovecot host lists its users) or known (the users Redis keeps a record of, for a userdb Dovecot cannot list)")
}

func (c *SweepConfig) validate(requestTimeout time.Duration) []error {
	var errs []error
	if c.List != sweep.ListUserdb && c.List != sweep.ListKnown {
		errs = append(errs, fmt.Errorf("sweep-list %q: want %s or %s", c.List, sweep.ListUserdb, sweep.ListKnown))
	}
	if c.FullSyncInterval < 0 {
		errs = append(errs, fmt.Errorf("full-sync-interval %s: must not be negative", c.FullSyncInterval))
	}
	if c.FailedRetryInterval < time.Second {
		// 5ms for 5m: local mode would ask for a retry sweep, each
		// reading every failed and pending user, every half millisecond
		// while a user is failed.
		errs = append(errs, fmt.Errorf("failed-retry-interval %s: want at least 1s", c.FailedRetryInterval))
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, fmt.Errorf("sweep-batch-size %d: want 1 to 10000", c.BatchSize))
	}
	if c.Budget < time.Second || c.Budget > requestTimeout {
		errs = append(errs, fmt.Errorf("sweep-budget %s: want at least 1s and at most request-timeout %s", c.Budget, requestTimeout))
	}
	if c.BatchInterval < 0 || c.BatchInterval > c.Budget/2 {
		errs = append(errs, fmt.Errorf("sweep-batch-interval %s: want 0 to half of sweep-budget %s", c.BatchInterval, c.Budget))
	}
	// A sweep must not count as lost while one of its steps may still run
	// or its continuation is on its way through the Broker.
	if c.LockTTL < 2*c.Budget {
		errs = append(errs, fmt.Errorf("sweep-lock-ttl %s: want at least twice sweep-budget %s", c.LockTTL, c.Budget))
	} else if c.LockTTL > 24*time.Hour {
		// A mistake (hours for minutes): a sweep whose continuation got
		// lost would keep every other sweep from starting that long.
		errs = append(errs, fmt.Errorf("sweep-lock-ttl %s: want at most 24h: a sweep whose continuation got lost keeps every other sweep from starting that long", c.LockTTL))
	}
	return errs
}

// options are the sweep package's options from the settings.
func (c *SweepConfig) options() sweep.Options {
	return sweep.Options{FullSyncInterval: c.FullSyncInterval, FailedRetryInterval: c.FailedRetryInterval,
		BatchSize: c.BatchSize, BatchInterval: c.BatchInterval, Budget: c.Budget, LockTTL: c.LockTTL, List: c.List}
}
