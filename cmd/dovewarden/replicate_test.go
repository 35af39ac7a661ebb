package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

func TestReplicate_PostsOneRequestPerUser(t *testing.T) {
	broker, got := recordingBroker(t, 3)
	env, stdout, stderr := testEnv(map[string]string{"K_SINK": broker.URL}, "")
	if err := run(context.Background(), env, []string{"replicate", "--full", "alice", "--host", "mail-b", "bob", "--priority", "low"}); err != nil {
		t.Fatalf("replicate: %v\n%s", err, stderr)
	}
	for _, user := range []string{"alice", "bob"} {
		ev := <-got
		req, err := contract.ToRequest(ev)
		if err != nil || req.User != user || !req.Full || req.Host != "mail-b" || req.Priority != change.Low || !req.Explicit {
			t.Errorf("request %+v, %v; want a full low-priority one of %s from mail-b", req, err, user)
		}
		var d contract.ReplicationRequested
		if err := ev.DataAs(&d); err != nil || d.Reason != "admin" {
			t.Errorf("data %+v, %v", d, err)
		}
		if ev.Type() != contract.TypeReplicationRequested || ev.Source() != "dovewarden/cli" || ev.Extensions()["priority"] != "low" {
			t.Errorf("event %v", ev)
		}
		if !strings.Contains(stdout.String(), "replication.requested "+ev.ID()+" for "+user+" sent to "+broker.URL) {
			t.Errorf("stdout %q lacks %s", stdout, user)
		}
	}
	if len(got) != 0 {
		t.Error("more events than users")
	}
}

func TestReplicate_Failures(t *testing.T) {
	var posted atomic.Int32
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posted.Add(1)
		http.Error(w, "no", http.StatusBadRequest)
	}))
	defer refusing.Close()
	withPassword := strings.Replace(refusing.URL, "http://", "http://u:hunter2@", 1)
	for name, tt := range map[string]struct {
		args []string
		want string
		sent int32 // the events that reach the Broker
	}{
		"no user":        {nil, "no user", 0},
		"bad user":       {[]string{"--", "-f"}, `user "-f"`, 0},
		"bad user later": {[]string{"alice", "b*"}, `user "b*"`, 0},
		"bad priority":   {[]string{"--priority", "urgent", "alice"}, "priority", 0},
		"bad host":       {[]string{"--host", "mail a", "alice"}, "host", 0},
		"bad reason":     {[]string{"--reason", "a\nb", "alice"}, "reason", 0},
		"broker refuses": {[]string{"alice", "bob"}, `user "bob": send replication.requested`, 2},
	} {
		posted.Store(0)
		env, _, _ := testEnv(map[string]string{"K_SINK": withPassword}, "")
		err := run(context.Background(), env, append([]string{"replicate"}, tt.args...))
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: err %v, want %q", name, err, tt.want)
		}
		if n := posted.Load(); n != tt.sent {
			t.Errorf("%s: %d events reached the Broker, want %d", name, n, tt.sent)
		}
	}
	// Neither the help, whose default would be K_SINK, nor an error about
	// a URL whose password has characters %q escapes shows the password.
	for _, cmd := range []string{"replicate", "sweep"} {
		env, stdout, stderr := testEnv(map[string]string{"K_SINK": withPassword}, "")
		_ = run(context.Background(), env, []string{cmd, "-h"})
		if out := stdout.String() + stderr.String(); !strings.Contains(out, "broker-url") || strings.Contains(out, "hunter2") {
			t.Errorf("%s -h shows the password, or no broker-url:\n%s", cmd, out)
		}
	}
	env, _, _ := testEnv(nil, "")
	err := run(context.Background(), env, []string{"replicate", "--broker-url", `htp://admin:pa"ss\hunter2@broker.example/x`, "alice"})
	if err == nil || !strings.Contains(err.Error(), "want an absolute http or https URL") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("a bad broker-url with a quoted password: %v", err)
	}
}

// TestReplicate_ThroughLocal asks `dovewarden local` for a full
// replication of a user nobody changed, through its broker ingress, and
// the sync function runs it.
func TestReplicate_ThroughLocal(t *testing.T) {
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	env, _, stderr := testEnv(map[string]string{
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_SHUTDOWN_TIMEOUT": "5s",
		"DOVEWARDEN_SWEEP_EVERY":      "0",
	}, "")
	base, stop := serve(t, env, stderr, "local", "--listen", "127.0.0.1:0",
		"--doveadm-url", fake.APIURL(), "--destination", "tcp:127.0.0.1:1")
	cli, stdout, cliErr := testEnv(nil, "")
	if err := run(context.Background(), cli, []string{"replicate", "--broker-url", base + "/local/dovewarden", "--full", "carol"}); err != nil {
		t.Fatalf("replicate: %v\n%s", err, cliErr)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(tr.CallsOf("carol")) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if calls := tr.CallsOf("carol"); len(calls) != 1 || !calls[0].Full {
		t.Fatalf("dsyncs of carol %+v, want one full sync\n%s\n%s", calls, stdout, stderr)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestReplicate_NormalisesUsers: a user is asked for under the name ingest
// gives it (--username-format, %Lu by default), so its lock, status and
// exclusion apply; a user named twice is asked for once.
func TestReplicate_NormalisesUsers(t *testing.T) {
	broker, got := recordingBroker(t, 4)
	for _, tt := range []struct {
		env  map[string]string
		args []string
		want []string
	}{
		{nil, []string{"Alice", "alice", "BOB@Example.ORG"}, []string{"alice", "bob@example.org"}},
		{map[string]string{"DOVEWARDEN_USERNAME_FORMAT": "%Ln"}, []string{"Carol@example.org"}, []string{"carol"}},
	} {
		vars := map[string]string{"K_SINK": broker.URL}
		for k, v := range tt.env {
			vars[k] = v
		}
		env, stdout, stderr := testEnv(vars, "")
		if err := run(context.Background(), env, append([]string{"replicate"}, tt.args...)); err != nil {
			t.Fatalf("replicate %v: %v\n%s", tt.args, err, stderr)
		}
		for _, user := range tt.want {
			req, err := contract.ToRequest(<-got)
			if err != nil || req.User != user {
				t.Errorf("replicate %v: request %+v, %v; want user %s", tt.args, req, err, user)
			}
			if !strings.Contains(stdout.String(), " for "+user+" sent to ") {
				t.Errorf("stdout %q lacks %s", stdout, user)
			}
		}
		if len(got) != 0 {
			t.Errorf("replicate %v: more events than users %v", tt.args, tt.want)
		}
	}
}

// TestReplicate_SaysWhatIsWrongWithAUser: a user doveadm would refuse is
// refused for that reason, not for what the event made of it.
func TestReplicate_SaysWhatIsWrongWithAUser(t *testing.T) {
	env, _, _ := testEnv(map[string]string{"K_SINK": "http://127.0.0.1:1/"}, "")
	for user, want := range map[string]string{
		"\xff\xfe":          "not valid UTF-8",
		" alice":            "white space",
		"alice ":            "white space",
		"--username-format": "username-format",
	} {
		args := []string{"replicate", "--", user}
		if user == "--username-format" {
			args = []string{"replicate", "--username-format", "%x", "alice"}
		}
		err := run(context.Background(), env, args)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("replicate %q: %v, want an error saying %q", user, err, want)
		}
	}
}

// TestHelp_HidesKSink: the help of the serving commands, whose
// broker-url and results-sink default to K_SINK, shows neither a password
// nor a token of it.
func TestHelp_HidesKSink(t *testing.T) {
	ksink := "http://u:hunter2@broker.example/x?access_token=tok3n"
	for _, cmd := range []string{"ingest", "sync", "local"} {
		env, stdout, stderr := testEnv(map[string]string{"K_SINK": ksink}, "")
		_ = run(context.Background(), env, []string{cmd, "-h"})
		out := stdout.String() + stderr.String()
		if !strings.Contains(out, "-results-sink") && !strings.Contains(out, "-broker-url") || strings.Contains(out, "hunter2") || strings.Contains(out, "tok3n") {
			t.Errorf("%s -h shows K_SINK's secrets, or no setting it is the default of:\n%s", cmd, out)
		}
	}
}
