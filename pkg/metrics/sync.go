package metrics

// Sync metric names (without the namespace).
const (
	// RedisMayEvict is 1 while the Redis server may evict dovewarden's
	// keys (a maxmemory with a policy other than noeviction), read at
	// each scrape.
	RedisMayEvict = "redis_may_evict"
	// RedisClientCertExpiry is when the client certificate presented to
	// Redis (redis-cert-file) expires, read at each scrape.
	RedisClientCertExpiry = "redis_client_certificate_expiry_timestamp_seconds"
	// SyncEventsReceived counts CloudEvents received, by type.
	SyncEventsReceived = "sync_events_received_total"
	// SyncEventsRejected counts events answered 4xx, by reason.
	SyncEventsRejected = "sync_events_rejected_total"
	// SyncDecisions counts what was decided per event, by decision
	// (synced, covered, coalesced, excluded, failed, unavailable) and
	// priority.
	SyncDecisions = "sync_decisions_total"
	// SyncDsyncs counts dsync attempts by outcome (success or the failure
	// class of the exit-code policy) and priority.
	SyncDsyncs = "sync_dsyncs_total"
	// SyncDsyncSeconds is the duration of dsync attempts, by priority.
	SyncDsyncSeconds = "sync_dsync_duration_seconds"
	// SyncLagSeconds is the replication lag: from the oldest change a
	// successful dsync covered to its end, by priority.
	SyncLagSeconds = "sync_replication_lag_seconds"
	// SyncLockContention counts events that found the user's lock held.
	SyncLockContention = "sync_lock_contention_total"
	// SyncCoalescedChanges counts changes acknowledged without a dsync of
	// their own, by how (covered: a dsync that started after them already
	// succeeded; merged: left for the running dsync's owner).
	SyncCoalescedChanges = "sync_coalesced_changes_total"
	// SyncReruns counts dsyncs run again by a lock owner because changes
	// arrived during its dsync.
	SyncReruns = "sync_reruns_total"
	// SyncStatesLeftOut counts dsyncs run as full ones without the user's
	// stored state, which the doveadm transport could not pass (too large).
	SyncStatesLeftOut = "sync_states_left_out_total"
	// SyncAskedAgain counts users handed back to the Broker as a
	// replication.requested after --max-rounds dsyncs of one request, by
	// result (sent, failed: left for the sweep).
	SyncAskedAgain = "sync_asked_again_total"
	// SyncInProgress is the number of dsyncs this instance runs now.
	SyncInProgress = "sync_dsyncs_in_progress"
	// SyncPendingUsers and SyncFailingUsers are read from Redis at scrape
	// time: users with changes not yet replicated, and users whose last
	// replication failed after its last attempt.
	SyncPendingUsers = "sync_pending_users"
	SyncFailingUsers = "sync_failing_users"
	// SyncConfigProblems counts failures that need an admin (exit codes
	// 77/78, rejected credentials, protocol errors), by class.
	SyncConfigProblems = "sync_config_problems_total"
	// SyncNotifyFailures counts replication.failed events of intermediate
	// attempts that could not be sent to the Broker.
	SyncNotifyFailures = "sync_notify_failures_total"
)

// Local mode's excluded-users file (--excluded-users).
const (
	// ExcludedUsers is the number of users in the file as last loaded
	// into Redis's excluded set.
	ExcludedUsers = "excluded_users"
	// ExcludedUsersLoads counts loads of the file, at start and on
	// SIGHUP, by outcome (success, error); after an error the set loaded
	// before stays.
	ExcludedUsersLoads = "excluded_users_loads_total"
)
