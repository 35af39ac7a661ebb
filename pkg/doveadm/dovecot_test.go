package doveadm_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// messages returns the INBOX message count of user on in.
func messages(t *testing.T, in *dovecottest.Instance, user string) string {
	t.Helper()
	out, err := in.Doveadm(context.Background(), "mailbox", "status", "-u", user, "messages", "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "messages=") {
			return f
		}
	}
	t.Fatalf("doveadm mailbox status: no messages= in %q", out)
	return ""
}

// The doveadm-http transport against two real Dovecot 2.3 instances: a
// first sync, an incremental one with the returned state, the other
// direction, and the failures the policy table must classify.
func TestIntegrationDovecot23_DoveadmHTTPTransport(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	users := map[string]string{"u1": "pass"}
	a := dovecottest.StartT(t, dovecottest.Options{Version: dovecottest.V23, Name: "mail-a.test", Users: users})
	b := dovecottest.StartT(t, dovecottest.Options{Version: dovecottest.V23, Name: "mail-b.test", Users: users})
	appendTo := func(in *dovecottest.Instance, subject string) {
		t.Helper()
		s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage(subject, "x")); err != nil {
			t.Fatal(err)
		}
	}
	tr := doveadm.NewHTTP(nil, time.Minute)
	aToB := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword, Destination: "tcp:" + b.DoveadmAddr}
	bToA := doveadm.Endpoint{Name: b.Name, URL: b.DoveadmHTTPURL, User: "doveadm", Password: b.DoveadmPassword, Destination: "tcp:" + a.DoveadmAddr}
	sync := func(ep doveadm.Endpoint, req doveadm.SyncRequest) (doveadm.SyncResult, error) {
		req.Destination, req.LockTimeout = ep.Destination, 10*time.Second
		return tr.Sync(ctx, ep, req)
	}

	appendTo(a, "m1")
	appendTo(a, "m2")
	first, err := sync(aToB, doveadm.SyncRequest{User: "u1"})
	if err != nil || first.State == "" {
		t.Fatalf("first sync: %+v %v", first, err)
	}
	if got := messages(t, b, "u1"); got != "messages=2" {
		t.Fatalf("replica has %s after the first sync", got)
	}

	appendTo(a, "m3")
	second, err := sync(aToB, doveadm.SyncRequest{User: "u1", State: first.State})
	if err != nil || second.State == "" || second.State == first.State {
		t.Fatalf("incremental sync: %+v %v", second, err)
	}
	if got := messages(t, b, "u1"); got != "messages=3" {
		t.Fatalf("replica has %s after the incremental sync", got)
	}

	appendTo(b, "m4")
	if _, err := sync(bToA, doveadm.SyncRequest{User: "u1", Full: true}); err != nil {
		t.Fatalf("B->A full sync: %v", err)
	}
	if got := messages(t, a, "u1"); got != "messages=4" {
		t.Fatalf("A has %s after B->A", got)
	}

	_, err = sync(aToB, doveadm.SyncRequest{User: "nosuchuser"})
	if r := doveadm.Decide(err); r.Class != "no_user" {
		t.Errorf("unknown user: %v, class %s", err, r.Class)
	}

	wrong := aToB
	wrong.Password = "wrong-password-not-shown"
	_, err = sync(wrong, doveadm.SyncRequest{User: "u1"})
	if r := doveadm.Decide(err); r.Class != "unauthorized" || strings.Contains(err.Error(), wrong.Password) {
		t.Errorf("wrong password: %v, class %s", err, r.Class)
	}

	// Destination down: 2.3 answers an empty reply (or 75); both retryable.
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err = sync(aToB, doveadm.SyncRequest{User: "u1", State: second.State})
	if r := doveadm.Decide(err); !r.Retryable || (r.Class != "transport" && r.Class != "tempfail") {
		t.Errorf("destination down: %v, class %s", err, r.Class)
	}
	t.Logf("destination down: %v", err)
}
