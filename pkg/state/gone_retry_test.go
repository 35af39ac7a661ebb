package state_test

import (
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// A Fail of a user that no longer exists (exit code 67) whose reply is
// lost is sent again; the user's record, which the first run dropped,
// stays dropped. Before, the second run found no record of the call (the
// record was gone with it) and wrote a new record with the failure: the
// deleted user came back as a record that --sweep-list known sweeps.
func TestRetriedFail_AGoneUsersRecordStaysDropped(t *testing.T) {
	p, st, other := viaLostReply(t)
	c := beginA(t, st)
	var err error
	p.cut(t, func() {
		_, err = st.Fail(ctx, state.FailureArgs{User: "u1", Token: "tokA", Host: "mail-a", Error: "exit code 67",
			Class: "no_user", ExitCode: 67, Start: c.Start, Final: true, Release: true, Gone: true})
	})
	if err != nil {
		t.Fatal(err)
	}
	st2, err := other.Status(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if st2.Failed || !st2.PendingSince.IsZero() || st2.InProgress {
		t.Errorf("status %+v: want neither failed, pending nor in progress", st2)
	}
	var users []string
	if err := other.KnownUsers(ctx, 10, func(u []string) error { users = append(users, u...); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(users) != 0 {
		t.Errorf("records kept %v after the user was found gone: want none", users)
	}
}
