package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// TestUserDeleted: a user replicated by dovewarden is deleted on both
// servers (out of the userdbs, its mail removed), as docs/operations.md
// says to. `dovewarden replicate USER` then runs its dsync, which answers
// exit code 67 (no such user): the reply says class no_user, and nothing
// of the user is left in Redis (record, dsync states, marks, lock), so
// neither `dovewarden status` nor a sweep with --sweep-list known finds
// it. The other user is untouched.
func TestUserDeleted(t *testing.T) {
	eachCase(t, []pairCase{{shapeSplit, v24, v24}, {shapeSplit, v23, v23}}, func(t *testing.T, c pairCase) {
		const gone, kept = "u2", "u1"
		s := newSystem(t, c.config(kept, gone))
		rdb := redis.NewClient(&redis.Options{Addr: s.redisAddr})
		t.Cleanup(func() { _ = rdb.Close() })
		st := state.New(rdb)

		start := time.Now()
		s.deliver(gone, "before-0")
		s.deliver(kept, "before-0")
		s.awaitResult(gone, start)
		s.awaitResult(kept, start)
		s.awaitConverged(gone, kept)
		// Settled: no dsync of it runs or waits (a delivery's events can
		// start a second one), which would end after the deletion.
		err := poll(s.ctx, convergeLimit, 50*time.Millisecond, func() error {
			us, err := st.Status(s.ctx, gone)
			if err != nil {
				return err
			}
			if us.InProgress || !us.PendingSince.IsZero() || us.Failed || len(us.States) != 1 {
				return errNotYet(fmt.Sprintf("%s settled with a dsync state (in progress %v, pending since %v, failed %v, %d states)",
					gone, us.InProgress, us.PendingSince, us.Failed, len(us.States)))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		for _, in := range []*dovecottest.Instance{s.a, s.b} {
			deleteUser(t, in, gone)
		}
		start = time.Now()
		var out []byte
		out, err = exec.CommandContext(s.ctx, dovewardenBin, "replicate", "--broker-url", s.brokerURL, gone).CombinedOutput()
		if err != nil {
			t.Fatalf("dovewarden replicate %s: %v: %s", gone, err, out)
		}
		var class string
		err = poll(s.ctx, convergeLimit, 5*time.Millisecond, func() error {
			for _, typ := range []string{"org.dovewarden.replication.succeeded", "org.dovewarden.replication.failed"} {
				for _, r := range s.events.results(typ) {
					if r.User == gone && r.Start.After(start) && r.RetryBy != "sync" {
						class = typ + " " + r.Class
						return nil
					}
				}
			}
			return errNotYet("the result of " + gone + "'s dsync after its deletion")
		})
		if err != nil {
			t.Fatal(err)
		}
		if class != "org.dovewarden.replication.failed no_user" {
			t.Fatalf("%s's dsync after its deletion: %s, want replication.failed of class no_user", gone, class)
		}
		keys, err := rdb.Keys(s.ctx, "*{"+gone+"}*").Result()
		if err != nil || len(keys) != 0 {
			t.Errorf("keys of %s left after its dsync answered no such user: %v %v", gone, keys, err)
		}
		for _, set := range []string{state.PendingKey, state.FailedKey} {
			if err := rdb.ZScore(s.ctx, set, gone).Err(); err != redis.Nil {
				t.Errorf("%s still in %s (%v)", gone, set, err)
			}
		}
		var known []string
		if err := st.KnownUsers(s.ctx, 100, func(u []string) error { known = append(known, u...); return nil }); err != nil {
			t.Fatal(err)
		}
		if strings.Join(known, ",") != kept {
			t.Errorf("users redis knows: %v, want only %s", known, kept)
		}

		// The user that stays replicates as before.
		start = time.Now()
		s.deliver(kept, "after-0")
		s.awaitResult(kept, start)
		wantMessages(t, s.awaitConverged(kept)[kept], "after", 1)
	})
}

// deleteUser takes user out of in's userdb and removes its mail, then
// waits until Dovecot no longer knows it: it reads the passwd-file again
// when it changed, but looks at most once a second.
func deleteUser(t *testing.T, in *dovecottest.Instance, user string) {
	t.Helper()
	path := filepath.Join(in.Dir, "users")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if !strings.HasPrefix(l, user+":") {
			keep = append(keep, l)
		}
	}
	if len(keep) == len(strings.SplitAfter(string(b), "\n")) {
		t.Fatalf("%s is not in %s's userdb", user, in.Name)
	}
	if err := os.WriteFile(path, []byte(strings.Join(keep, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(in.Dir, "mail", user)); err != nil {
		t.Fatal(err)
	}
	err = poll(context.Background(), 10*time.Second, 100*time.Millisecond, func() error {
		out, err := in.Doveadm(context.Background(), "user", user)
		if err == nil || !strings.Contains(string(out)+err.Error(), "doesn't exist") {
			return errNotYet(fmt.Sprintf("%s unknown to %s (doveadm user: %v)", user, in.Name, err))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
