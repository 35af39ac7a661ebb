package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// prepareVia logs in on instance in, prepares INBOX with n messages and
// logs out again (nothing of it is recorded).
func prepareVia(ctx context.Context, e *env, in *dovecottest.Instance, n int) error {
	if err := e.login(ctx, in); err != nil {
		return err
	}
	err := e.prepareInbox(ctx, n)
	_ = e.logout(ctx)
	return err
}

// otherScenarios lists the LMTP, POP3 and doveadm fixtures.
func otherScenarios() []scenario {
	return []scenario{
		{file: "lmtp-delivery", expect: []string{"mail_delivery_finished"},
			run: func(ctx context.Context, e *env) error {
				msg := dovecottest.TestMessage("delivered by lmtp", "Hello over LMTP.")
				err := dovecottest.DeliverLMTP(e.a.LMTPAddr, "sender@example.test", user+"@mail-a.test", msg)
				e.log = append(e.log, exchange{"LHLO/MAIL FROM/RCPT TO:<u1@mail-a.test>/DATA", errText(err, "250 OK")})
				return err
			}},
		{file: "pop3-dele", expect: []string{"mail_expunged", "mail_user_session_finished"},
			setup: func(ctx context.Context, e *env) error { return prepareVia(ctx, e, e.a, 3) },
			run:   pop3Session},
		{file: "doveadm-sync", expect: []string{"http_server_request_finished", "mail_expunged"},
			setup: syncSetup,
			run: func(ctx context.Context, e *env) error {
				out, err := e.a.Sync(ctx, user, e.b)
				reply := strings.TrimSpace(string(out))
				if err != nil {
					reply = err.Error()
				}
				e.log = append(e.log, exchange{`POST doveadm/v1 [["sync",{"user":"u1","destination":["tcp:<mail-b>"],"state":""},"sync"]]`, reply})
				return err
			}},
	}
}

func errText(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

// pop3Session logs in over POP3, retrieves and deletes message 1, quits.
func pop3Session(ctx context.Context, e *env) error {
	s, err := dovecottest.DialPOP3(ctx, e.a.POP3Addr)
	if err != nil {
		return err
	}
	defer s.Close()
	for _, c := range []string{"USER " + user, "PASS " + password, "STAT", "RETR 1", "DELE 1", "QUIT"} {
		var reply string
		if c == "RETR 1" {
			reply, _, err = s.CmdMulti(ctx, c)
		} else {
			reply, err = s.Cmd(ctx, c)
		}
		e.log = append(e.log, exchange{c, reply})
		if err != nil {
			return err
		}
		if !strings.HasPrefix(reply, "+OK") {
			return fmt.Errorf("pop3 %s: %s", c, reply)
		}
	}
	return nil
}

// syncSetup makes both sides differ before the recorded sync: a first
// full sync, then on a a new message and a flag change, on b an expunge.
func syncSetup(ctx context.Context, e *env) error {
	if err := prepareVia(ctx, e, e.a, 3); err != nil {
		return err
	}
	if _, err := e.a.Sync(ctx, user, e.b); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	if err := e.login(ctx, e.a); err != nil {
		return err
	}
	if _, err := e.s.Append(ctx, "INBOX", "", dovecottest.TestMessage("new on mail-a before sync", "x")); err != nil {
		return err
	}
	if err := e.prepareInbox(ctx, 3); err != nil {
		return err
	}
	if err := e.prep(ctx, `STORE 1 +FLAGS.SILENT (\Flagged)`); err != nil {
		return err
	}
	_ = e.logout(ctx)
	if err := e.login(ctx, e.b); err != nil {
		return err
	}
	defer e.logout(ctx)
	if err := e.prepareInbox(ctx, 3); err != nil {
		return err
	}
	if err := e.prep(ctx, `STORE 2 +FLAGS.SILENT (\Deleted)`); err != nil {
		return err
	}
	return e.prep(ctx, "EXPUNGE")
}
