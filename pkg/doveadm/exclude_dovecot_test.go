package doveadm_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// TestIntegrationDovecot_ExcludeMailboxes: --dsync-exclude-mailboxes as
// both transports pass it to real Dovecot 2.3 and 2.4 (excludeMailbox,
// -x). Each form the docs give leaves its mailbox off the replica: a name,
// a wildcard, a name outside ASCII (given in UTF-8, created by the client
// in modified UTF-7), a name with a comma (? in its place); every other
// mailbox is copied. A dsync without the list, from the state the
// excluding one returned, then copies what was left out.
func TestIntegrationDovecot_ExcludeMailboxes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	exclude, err := doveadm.ParseExcludeMailboxes(`Junk, Lists/*, Entwürfe, a?b, Trash, spam`)
	if err != nil {
		t.Fatal(err)
	}
	// Matched case-sensitively: "spam" leaves Spam in. And a special-use
	// flag, which ParseExcludeMailboxes refuses, leaves its mailbox in
	// too (doveadm-sync(1) says otherwise): were Dovecot to start
	// honouring it, Archive would be missing below, and the refusal
	// could go.
	exclude = append(exclude, `\Archive`)
	// By the name IMAP gives them; doveadm mailbox status lists them
	// decoded (utf8).
	left := []string{"Junk", "Lists/dovecot", "Entw&APw-rfe", "a,b", "Trash"}
	kept := []string{"INBOX", "Keep", "Lists", "Spam", "Archive"}
	utf8 := map[string]string{"Entw&APw-rfe": "Entwürfe"}
	status := func(on map[string]string, mb string) string {
		if u, ok := utf8[mb]; ok {
			mb = u
		}
		return on[mb]
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		for _, transport := range []string{doveadm.TransportHTTP, doveadm.TransportExec} {
			t.Run(v+"/"+transport, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				users := map[string]string{"u1": "pass"}
				a := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
				b := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-b.test", Users: users})
				s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, "u1", "pass")
				if err != nil {
					t.Fatal(err)
				}
				for _, mb := range append(append([]string{}, left...), kept...) {
					if mb != "INBOX" && mb != "Archive" { // Archive is \Archive in dovecottest's config
						if _, tagged, err := s.Cmd(ctx, "CREATE "+dovecottest.Quote(mb)); err != nil || !dovecottest.IsOK(tagged) {
							t.Fatalf("CREATE %s: %s %v", mb, tagged, err)
						}
					}
					if _, err := s.Append(ctx, mb, "", dovecottest.TestMessage("in "+mb, "x")); err != nil {
						t.Fatal(err)
					}
				}
				s.Close()

				var tr doveadm.Transport = doveadm.NewHTTP(nil, time.Minute)
				ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword, Destination: b.Destination}
				if transport == doveadm.TransportExec {
					bin, err := a.DoveadmScript(t.TempDir())
					if err != nil {
						t.Fatal(err)
					}
					tr, ep = doveadm.NewExec(bin, time.Minute), doveadm.Endpoint{Name: a.Name, Destination: b.Destination, Config: a.ConfigPath}
				}
				// Exit code 2 (a mailbox changed: the autocreated ones
				// appear on both sides) asks for a run again, as sync does.
				sync := func(req doveadm.SyncRequest) doveadm.SyncResult {
					t.Helper()
					req.User, req.Destination, req.LockTimeout = "u1", b.Destination, 10*time.Second
					for try := 1; ; try++ {
						res, err := tr.Sync(ctx, ep, req)
						if err == nil {
							return res
						}
						if doveadm.Decide(err).Class != "changed" || try == 3 {
							t.Fatal(err)
						}
					}
				}
				res := sync(doveadm.SyncRequest{ExcludeMailboxes: exclude})
				on := mailboxMessages(t, b)
				for _, mb := range left {
					if st := status(on, mb); st != "" && st != "messages=0" { // Trash is auto = subscribe
						t.Errorf("%s reached the replica: %s", mb, status(on, mb))
					}
				}
				for _, mb := range kept {
					if status(on, mb) != "messages=1" {
						t.Errorf("%s on the replica: %q, want messages=1", mb, status(on, mb))
					}
				}

				// Taken off the list: the next dsync copies the rest.
				res = sync(doveadm.SyncRequest{State: res.State})
				on = mailboxMessages(t, b)
				for _, mb := range append(append([]string{}, left...), kept...) {
					if status(on, mb) != "messages=1" {
						t.Errorf("after a dsync without the list, %s on the replica: %q, want messages=1", mb, status(on, mb))
					}
				}

				// The longest list ParseExcludeMailboxes takes is one
				// Dovecot takes too.
				var longest []string
				for i := range 100 {
					longest = append(longest, fmt.Sprintf("%04d%s", i, strings.Repeat("x", 1020)))
				}
				if _, err := doveadm.ParseExcludeMailboxes(strings.Join(longest, ",")); err != nil {
					t.Fatal(err)
				}
				sync(doveadm.SyncRequest{State: res.State, ExcludeMailboxes: longest})
			})
		}
	}
}

// mailboxMessages maps each of u1's mailboxes on in, by its name in UTF-8,
// to "messages=N".
func mailboxMessages(t *testing.T, in *dovecottest.Instance) map[string]string {
	t.Helper()
	out, err := in.Doveadm(context.Background(), "mailbox", "status", "-u", "u1", "messages", "*")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if i := strings.LastIndex(line, " messages="); i > 0 {
			m[line[:i]] = line[i+1:]
		}
	}
	return m
}
