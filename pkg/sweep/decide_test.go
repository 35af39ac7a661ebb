package sweep

import (
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	o := Options{FullSyncInterval: 24 * time.Hour, FailedRetryInterval: 5 * time.Minute}
	hosts := []string{"mail-a", "mail-b"}
	recentFull := state.SweepFacts{LastStart: now.Add(-time.Hour), LastFull: true}
	tests := []struct {
		name   string
		entry  state.SweepEntry
		facts  state.SweepFacts
		opts   *Options
		reason Reason
		skip   string
		full   bool
		host   string
	}{
		{"up to date", state.SweepEntry{User: "u", Host: 1}, recentFull, nil, "", "", false, ""},
		{"pending, from the host of the change", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{Pending: true, PendingHost: "mail-b", LastStart: now.Add(-time.Hour), LastFull: true}, nil, ReasonPending, "", false, "mail-b"},
		{"pending, not listed, no host: the default", state.SweepEntry{User: "u"},
			state.SweepFacts{Pending: true, LastStart: now.Add(-time.Hour), LastFull: true}, nil, ReasonPending, "", false, ""},
		{"pending, not listed, no pending host: where it was last replicated from", state.SweepEntry{User: "u"},
			state.SweepFacts{Pending: true, LastHost: "mail-b", LastStart: now.Add(-time.Hour), LastFull: true}, nil, ReasonPending, "", false, "mail-b"},
		{"stale, not listed (known users): where it was last replicated from", state.SweepEntry{User: "u"},
			state.SweepFacts{LastHost: "mail-b", LastStart: now.Add(-25 * time.Hour), LastFull: true}, nil, ReasonStale, "", true, "mail-b"},
		{"listed: the listing host, not the last one", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{LastHost: "mail-b", LastStart: now.Add(-25 * time.Hour), LastFull: true}, nil, ReasonStale, "", true, "mail-a"},
		{"not listed, a bad last host: the default", state.SweepEntry{User: "u"},
			state.SweepFacts{LastHost: "a b", LastStart: now.Add(-25 * time.Hour), LastFull: true}, nil, ReasonStale, "", true, ""},
		{"pending with a bad host: the listed one", state.SweepEntry{User: "u", Host: 2},
			state.SweepFacts{Pending: true, PendingHost: "a b", LastStart: now.Add(-time.Hour), LastFull: true}, nil, ReasonPending, "", false, "mail-b"},
		{"failed, retry due", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{Failed: true, FailedAt: now.Add(-6 * time.Minute), Pending: true, LastStart: now.Add(-time.Hour), LastFull: true}, nil, ReasonFailed, "", false, "mail-a"},
		{"failed, retry not due (pending too)", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{Failed: true, FailedAt: now.Add(-time.Minute), Pending: true}, nil, "", SkipRetryNotDue, false, ""},
		{"never synced: full", state.SweepEntry{User: "u", Host: 2}, state.SweepFacts{}, nil, ReasonNever, "", true, "mail-b"},
		{"never synced, full requested lately: wait", state.SweepEntry{User: "u", Host: 2},
			state.SweepFacts{FullRequested: now.Add(-time.Hour)}, nil, "", "", false, ""},
		{"last full sync too old: full", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{LastStart: now.Add(-25 * time.Hour), LastFull: true}, nil, ReasonStale, "", true, "mail-a"},
		{"recent incremental, old full (Dovecot's rule): full", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{LastStart: now.Add(-time.Minute), FullRequested: now.Add(-25 * time.Hour)}, nil, ReasonStale, "", true, "mail-a"},
		{"recent incremental after a recent full sync no sweep asked for (a first dsync): wait", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{LastStart: now.Add(-time.Minute), LastFullStart: now.Add(-time.Hour)}, nil, "", "", false, ""},
		{"recent incremental after an old full sync: full", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{LastStart: now.Add(-time.Minute), LastFullStart: now.Add(-25 * time.Hour), FullRequested: now.Add(-26 * time.Hour)}, nil, ReasonStale, "", true, "mail-a"},
		{"recent incremental, recent full request", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{LastStart: now.Add(-time.Minute), FullRequested: now.Add(-time.Hour)}, nil, "", "", false, ""},
		{"pending and full due: a full sync", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{Pending: true, LastStart: now.Add(-30 * time.Hour)}, nil, ReasonPending, "", true, "mail-a"},
		{"no periodic full syncs: never-synced left alone", state.SweepEntry{User: "u", Host: 1}, state.SweepFacts{},
			&Options{FailedRetryInterval: time.Minute}, "", "", false, ""},
		{"no periodic full syncs: pending still requested", state.SweepEntry{User: "u", Host: 1}, state.SweepFacts{Pending: true},
			&Options{FailedRetryInterval: time.Minute}, ReasonPending, "", false, "mail-a"},
		{"dsync before a recovery: requested", state.SweepEntry{User: "u", Host: 2},
			state.SweepFacts{LastStart: now.Add(-time.Hour), LastFull: true, Recovery: now.Add(-time.Minute)}, nil, ReasonRecovery, "", false, "mail-b"},
		{"dsync after the recovery: up to date", state.SweepEntry{User: "u", Host: 2},
			state.SweepFacts{LastStart: now.Add(-time.Second), LastFull: true, Recovery: now.Add(-time.Minute)}, nil, "", "", false, ""},
		{"recovery, and the full sync due: stale, a full sync", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{LastStart: now.Add(-25 * time.Hour), LastFull: true, Recovery: now.Add(-time.Minute)}, nil, ReasonStale, "", true, "mail-a"},
		{"recovery, never synced and the full sync due: never", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{Recovery: now.Add(-time.Minute)}, nil, ReasonNever, "", true, "mail-a"},
		{"never synced, full requested before a recovery: asked again (the request was lost)", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{FullRequested: now.Add(-time.Hour), Recovery: now.Add(-time.Minute)}, nil, ReasonRecovery, "", false, "mail-a"},
		{"pending before a recovery: pending", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{Pending: true, PendingHost: "mail-b", LastStart: now.Add(-time.Hour), LastFull: true, Recovery: now.Add(-time.Minute)}, nil, ReasonPending, "", false, "mail-b"},
		{"recovery, excluded", state.SweepEntry{User: "u", Host: 1}, state.SweepFacts{Excluded: true, Recovery: now}, nil, "", SkipExcluded, false, ""},
		{"recovery, in progress: skipped (the lock may be a dead run's: a later sweep looks again)", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{InProgress: true, Recovery: now, LastStart: now.Add(-2 * time.Minute), LastFull: true}, nil, "", SkipInProgress, false, ""},
		{"excluded", state.SweepEntry{User: "u", Host: 1}, state.SweepFacts{Excluded: true, Pending: true}, nil, "", SkipExcluded, false, ""},
		{"in progress", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{InProgress: true, Pending: true, LastStart: now.Add(-time.Hour), LastFull: true}, nil, "", SkipInProgress, false, ""},
		{"in progress, the full sync due: asked for (the lock owner's next round)", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{InProgress: true, LastStart: now.Add(-time.Minute), FullRequested: now.Add(-25 * time.Hour)}, nil, ReasonStale, "", true, "mail-a"},
		{"in progress, never synced: skipped (its first dsync, running, is a full one)", state.SweepEntry{User: "u", Host: 1},
			state.SweepFacts{InProgress: true}, nil, "", SkipInProgress, false, ""},
		{"bad username", state.SweepEntry{User: "-oProxyCommand=x", Host: 1}, state.SweepFacts{Pending: true}, nil, "", SkipBadUser, false, ""},
		{"wildcard username", state.SweepEntry{User: "a*", Host: 1}, state.SweepFacts{}, nil, "", SkipBadUser, false, ""},
		{"host index out of range: default", state.SweepEntry{User: "u", Host: 7}, state.SweepFacts{}, nil, ReasonNever, "", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := o
			if tt.opts != nil {
				opts = *tt.opts
			}
			req, skip := decide(tt.entry, tt.facts, now, opts, hosts, false)
			if skip != tt.skip {
				t.Errorf("skip %q, want %q", skip, tt.skip)
			}
			if tt.reason == "" {
				if req != nil {
					t.Errorf("request %+v, want none", req)
				}
				return
			}
			if req == nil {
				t.Fatalf("no request, want %s", tt.reason)
			}
			if req.Reason != tt.reason || req.Full != tt.full || req.Host != tt.host || req.User != tt.entry.User || !req.Time.Equal(now) {
				t.Errorf("request %+v, want reason %s full %v host %q", req, tt.reason, tt.full, tt.host)
			}
		})
	}
}

func TestSources(t *testing.T) {
	def := doveadm.Endpoint{URL: "http://mail-a:8080/doveadm/v1", Password: "p", Destination: "tcp:mail-b:12345"}
	single := Sources(doveadm.NewHostMap(def))
	if len(single) != 1 || single[0].Name != "" || single[0].Endpoint.URL != def.URL {
		t.Errorf("default only: %+v", single)
	}
	pair := doveadm.NewHostMap(def,
		doveadm.Endpoint{Name: "mail-a", URL: def.URL, Destination: "tcp:mail-b:12345"},
		doveadm.Endpoint{Name: "mail-b", URL: "http://mail-b:8080/doveadm/v1", Destination: "tcp:mail-a:12345"})
	got := Sources(pair)
	if len(got) != 2 || got[0].Name != "mail-a" || got[1].Name != "mail-b" || got[1].Endpoint.Password != "p" {
		t.Errorf("pair whose default is mail-a: %+v", got)
	}
	other := doveadm.NewHostMap(doveadm.Endpoint{URL: "http://mail-c:8080/doveadm/v1"}, doveadm.Endpoint{Name: "mail-a", URL: def.URL})
	if got := Sources(other); len(got) != 2 || got[1].Name != "" {
		t.Errorf("a default of its own: %+v", got)
	}
}

// TestDecide_AnAdministratorsSweepRetriesFailedUsersNow: a sweep an
// administrator asked for (dovewarden sweep, after fixing the replica)
// retries a failed user at once; dovewarden's own wait the interval.
func TestDecide_AnAdministratorsSweepRetriesFailedUsersNow(t *testing.T) {
	now := time.Now()
	o := Options{FullSyncInterval: 24 * time.Hour, FailedRetryInterval: 5 * time.Minute}
	facts := state.SweepFacts{Failed: true, FailedAt: now.Add(-time.Minute), Pending: true, LastStart: now.Add(-time.Hour), LastFull: true}
	for _, tc := range []struct {
		reason string
		want   Reason
	}{{"cli", ReasonFailed}, {"after the replica's repair", ReasonFailed},
		{SweepReasonSchedule, ""}, {SweepReasonStart, ""}, {SweepReasonRetry, ""}, {SweepReasonRecovery, ""}, {"", ""}} {
		req, skip := decide(state.SweepEntry{User: "u", Host: 1}, facts, now, o, []string{"mail-a"}, Asked(tc.reason))
		var got Reason
		if req != nil {
			got = req.Reason
		}
		if got != tc.want || (tc.want == "" && skip != SkipRetryNotDue) {
			t.Errorf("sweep of reason %q: request %+v, skip %q; want reason %q", tc.reason, req, skip, tc.want)
		}
	}
}
