package metrics

// Sweep metric names (without the namespace). The sweep runs inside the
// sync function, one batch per sweep.requested event.
const (
	// SweepsStarted counts sweeps started.
	SweepsStarted = "sweep_started_total"
	// SweepsFinished counts sweeps that ended, by outcome: completed, or
	// abandoned (its continuation was lost; a later sweep replaced it).
	SweepsFinished = "sweep_finished_total"
	// SweepUsersListed counts usernames the Dovecot hosts listed, by host
	// (default for the default host).
	SweepUsersListed = "sweep_users_listed_total"
	// SweepListFailures counts user listings that failed or were cut
	// short, by host.
	SweepListFailures = "sweep_list_failures_total"
	// SweepUsersExamined counts candidates the batches looked at.
	SweepUsersExamined = "sweep_users_examined_total"
	// SweepUsersRequested counts replication.requested events sent, by
	// reason (pending, failed, stale, never).
	SweepUsersRequested = "sweep_users_requested_total"
	// SweepUsersSkipped counts candidates not requested although they
	// might have been, by reason (bad_user, excluded, in_progress,
	// retry_not_due).
	SweepUsersSkipped = "sweep_users_skipped_total"
	// SweepBatches counts batches done.
	SweepBatches = "sweep_batches_total"
	// SweepSendFailures counts replication.requested events the Broker did
	// not take (the batch stops there and the rest waits for the next).
	SweepSendFailures = "sweep_send_failures_total"
	// SweepLastStart and SweepLastEnd are read from Redis at scrape time:
	// the start and end of the last completed sweep (Unix seconds), the
	// same on every instance. Alert when the end is too old.
	SweepLastStart = "sweep_last_start_timestamp_seconds"
	SweepLastEnd   = "sweep_last_end_timestamp_seconds"
	// SweepRunning is 1 while a sweep runs; SweepPosition and
	// SweepCandidates are its progress (read from Redis at scrape time).
	SweepRunning    = "sweep_running"
	SweepPosition   = "sweep_position"
	SweepCandidates = "sweep_candidates"
)
