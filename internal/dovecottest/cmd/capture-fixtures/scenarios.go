package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// imapCmd is a scenario recording one IMAP command on a logged-in session.
// With msgs > 0, INBOX is prepared (see prepareInbox) and left selected;
// pre runs unrecorded before the command.
func imapCmd(file string, msgs int, pre []string, cmd string) scenario {
	return scenario{
		file:   file,
		expect: cmdFinished,
		setup: func(ctx context.Context, e *env) error {
			if err := e.login(ctx, e.a); err != nil {
				return err
			}
			if msgs > 0 {
				if err := e.prepareInbox(ctx, msgs); err != nil {
					return err
				}
			}
			for _, p := range pre {
				if err := e.prep(ctx, p); err != nil {
					return err
				}
			}
			return nil
		},
		run:  func(ctx context.Context, e *env) error { return e.do(ctx, cmd) },
		done: logoutDone,
	}
}

const deleted1 = `STORE 1 +FLAGS.SILENT (\Deleted)`

var cmdFinished = []string{"imap_command_finished"}

// imapScenarios lists the IMAP fixtures, in capture order.
func imapScenarios() []scenario {
	sc := []scenario{{
		file:   "imap-login",
		expect: []string{"auth_master_client_login_finished"},
		run: func(ctx context.Context, e *env) error {
			s, err := dovecottest.DialIMAP(ctx, e.a.IMAPAddr)
			if err != nil {
				return err
			}
			e.s = s
			return e.do(ctx, fmt.Sprintf("LOGIN %s %s", user, password))
		},
		done: logoutDone,
	}}
	sc = append(sc,
		imapCmd("imap-capability", 0, nil, "CAPABILITY"),
		imapCmd("imap-noop", 0, nil, "NOOP"),
		imapCmd("imap-id", 0, nil, `ID ("name" "capture-fixtures" "version" "1")`),
		imapCmd("imap-enable", 0, nil, "ENABLE QRESYNC"),
		imapCmd("imap-namespace", 0, nil, "NAMESPACE"),
		imapCmd("imap-list", 0, nil, `LIST "" "*"`),
		imapCmd("imap-lsub", 0, nil, `LSUB "" "*"`),
		imapCmd("imap-status", 1, []string{"UNSELECT"}, "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"),
		imapCmd("imap-select", 1, []string{"UNSELECT"}, "SELECT INBOX"),
		imapCmd("imap-examine", 1, []string{"UNSELECT"}, "EXAMINE INBOX"),
		imapCmd("imap-create", 0, []string{"DELETE Projects"}, "CREATE Projects"),
		imapCmd("imap-create-fail", 0, []string{"CREATE Existing"}, "CREATE Existing"),
		scenario{expect: cmdFinished, file: "imap-bad", allowBad: true,
			setup: func(ctx context.Context, e *env) error { return e.login(ctx, e.a) },
			run:   func(ctx context.Context, e *env) error { return e.do(ctx, "CREATE") },
			done:  logoutDone},
		scenario{expect: cmdFinished, file: "imap-unknown-command", allowBad: true,
			setup: func(ctx context.Context, e *env) error { return e.login(ctx, e.a) },
			run:   func(ctx context.Context, e *env) error { return e.do(ctx, "XDOVEWARDEN") },
			done:  logoutDone},
		imapCmd("imap-delete", 0, []string{"CREATE ToDelete"}, "DELETE ToDelete"),
		imapCmd("imap-rename", 0, []string{"DELETE NewName", "CREATE OldName"}, "RENAME OldName NewName"),
		imapCmd("imap-subscribe", 0, []string{"CREATE Projects", "UNSUBSCRIBE Projects"}, "SUBSCRIBE Projects"),
		imapCmd("imap-unsubscribe", 0, []string{"CREATE Projects", "SUBSCRIBE Projects"}, "UNSUBSCRIBE Projects"),
		scenario{expect: cmdFinished, file: "imap-append",
			setup: func(ctx context.Context, e *env) error { return e.login(ctx, e.a) },
			run: func(ctx context.Context, e *env) error {
				return e.doLit(ctx, `APPEND INBOX (\Seen)`, dovecottest.TestMessage("appended", "Hello."), "")
			},
			done: logoutDone},
		scenario{expect: cmdFinished, file: "imap-append-catenate",
			setup: func(ctx context.Context, e *env) error {
				if err := e.login(ctx, e.a); err != nil {
					return err
				}
				return e.prepareInbox(ctx, 1)
			},
			run: func(ctx context.Context, e *env) error {
				hdr := "From: sender@example.test\r\nTo: u1@example.test\r\nSubject: catenated\r\n\r\n"
				return e.doLit(ctx, "APPEND INBOX CATENATE (TEXT", hdr,
					` URL "/INBOX;UIDVALIDITY={uidvalidity}/;UID={uid1}/;SECTION=TEXT")`)
			},
			done: logoutDone},
		imapCmd("imap-check", 1, nil, "CHECK"),
		imapCmd("imap-fetch-body-peek", 3, nil, "FETCH 1 (BODY.PEEK[])"),
		imapCmd("imap-fetch-body", 3, nil, "FETCH 1 (BODY[])"),
		imapCmd("imap-uid-fetch", 3, nil, "UID FETCH {uid1}:* (UID FLAGS INTERNALDATE RFC822.SIZE)"),
		imapCmd("imap-store", 3, nil, `STORE 1 +FLAGS (\Flagged)`),
		imapCmd("imap-uid-store", 3, nil, `UID STORE {uid2} +FLAGS (\Seen)`),
		imapCmd("imap-search", 3, nil, "SEARCH UNSEEN"),
		imapCmd("imap-uid-search", 3, nil, "UID SEARCH SUBJECT capture"),
		imapCmd("imap-sort", 3, nil, "SORT (DATE) UTF-8 ALL"),
		imapCmd("imap-uid-sort", 3, nil, "UID SORT (REVERSE ARRIVAL) UTF-8 ALL"),
		imapCmd("imap-thread", 3, nil, "THREAD REFERENCES UTF-8 ALL"),
		imapCmd("imap-uid-thread", 3, nil, "UID THREAD ORDEREDSUBJECT UTF-8 ALL"),
		imapCmd("imap-copy", 3, nil, "COPY 1 Archive"),
		imapCmd("imap-uid-copy", 3, nil, "UID COPY {uid2} Archive"),
		imapCmd("imap-move", 3, nil, "MOVE 1 Archive"),
		imapCmd("imap-uid-move", 3, nil, "UID MOVE {uid1} Archive"),
		imapCmd("imap-expunge", 3, []string{deleted1}, "EXPUNGE"),
		imapCmd("imap-uid-expunge", 3, []string{`UID STORE {uid1} +FLAGS.SILENT (\Deleted)`}, "UID EXPUNGE {uid1}"),
		imapCmd("imap-close", 3, []string{deleted1}, "CLOSE"),
		imapCmd("imap-unselect", 1, nil, "UNSELECT"),
		scenario{expect: cmdFinished, file: "imap-idle",
			setup: func(ctx context.Context, e *env) error {
				if err := e.login(ctx, e.a); err != nil {
					return err
				}
				return e.prepareInbox(ctx, 1)
			},
			run: func(ctx context.Context, e *env) error {
				if err := e.s.IdleStart(ctx); err != nil {
					return err
				}
				time.Sleep(200 * time.Millisecond)
				_, tagged, err := e.s.IdleDone(ctx)
				e.log = append(e.log, exchange{"IDLE ... DONE", tagged})
				return err
			},
			done: logoutDone},
		imapCmd("imap-getquotaroot", 0, nil, "GETQUOTAROOT INBOX"),
		imapCmd("imap-getquota", 0, nil, `GETQUOTA "User quota"`),
		imapCmd("imap-setquota", 0, nil, `SETQUOTA "User quota" (STORAGE 102400)`),
		imapCmd("imap-getacl", 0, nil, "GETACL INBOX"),
		imapCmd("imap-myrights", 0, nil, "MYRIGHTS INBOX"),
		imapCmd("imap-listrights", 0, nil, "LISTRIGHTS INBOX "+user2),
		imapCmd("imap-setacl", 0, []string{"DELETEACL INBOX " + user2}, "SETACL INBOX "+user2+" lrs"),
		imapCmd("imap-deleteacl", 0, []string{"SETACL INBOX " + user2 + " lr"}, "DELETEACL INBOX "+user2),
		imapCmd("imap-getmetadata", 0, []string{`SETMETADATA INBOX (/private/comment "prepared")`}, "GETMETADATA INBOX /private/comment"),
		imapCmd("imap-setmetadata", 0, nil, `SETMETADATA INBOX (/private/comment "set by capture-fixtures")`),
		imapCmd("imap-notify", 0, nil, "NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) (personal (MessageNew MessageExpunge MailboxName SubscriptionChange))"),
		replaceScenario("imap-replace", "REPLACE 1 INBOX"),
		replaceScenario("imap-uid-replace", "UID REPLACE {uid2} INBOX"),
		scenario{expect: cmdFinished, file: "imap-logout",
			setup: func(ctx context.Context, e *env) error { return e.login(ctx, e.a) },
			run: func(ctx context.Context, e *env) error {
				err := e.do(ctx, "LOGOUT")
				e.s.Close()
				e.s = nil
				return err
			}},
	)
	return sc
}

func replaceScenario(file, head string) scenario {
	return scenario{file: file, expect: cmdFinished,
		setup: func(ctx context.Context, e *env) error {
			if err := e.login(ctx, e.a); err != nil {
				return err
			}
			return e.prepareInbox(ctx, 3)
		},
		run: func(ctx context.Context, e *env) error {
			return e.doLit(ctx, head, dovecottest.TestMessage("replacement", "Replaced."), "")
		},
		done: logoutDone}
}
