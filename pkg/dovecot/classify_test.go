package dovecot

import (
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// wantIMAP is the specification the command table must implement, written
// out separately from IMAPCommands: "" means dropped as read-only, else the
// priority. Each row is one test; the table and this list must name the
// same commands.
var wantIMAP = map[string]change.Priority{
	"CAPABILITY": "", "NOOP": "", "LOGOUT": "", "STARTTLS": "", "AUTHENTICATE": "", "LOGIN": "",
	"ENABLE": "", "SELECT": "", "EXAMINE": "", "NAMESPACE": "", "STATUS": "", "IDLE": "", "LIST": "",
	"LSUB": "", "XLIST": "", "ID": "", "COMPRESS": "", "NOTIFY": "", "X-STATE": "", "CHECK": "", "UNSELECT": "",
	"CREATE": change.Low, "DELETE": change.Low, "RENAME": change.Low, "SUBSCRIBE": change.Low, "UNSUBSCRIBE": change.Low,
	"APPEND": change.High, "COPY": change.High, "UID COPY": change.High, "MOVE": change.High, "UID MOVE": change.High,
	"REPLACE": change.High, "UID REPLACE": change.High, "FILTER": change.High, "UID FILTER": change.High,
	"CLOSE": change.Low, "EXPUNGE": change.Low, "UID EXPUNGE": change.Low, "STORE": change.Low, "UID STORE": change.Low,
	"FETCH": "", "UID FETCH": "", // without a body section; see TestClassify_FetchSetsSeen
	"SEARCH": "", "UID SEARCH": "", "ESEARCH": "", "SORT": "", "UID SORT": "", "THREAD": "", "UID THREAD": "", "CANCELUPDATE": "",
	"GETMETADATA": "", "SETMETADATA": change.Low,
	"GETACL": "", "MYRIGHTS": "", "LISTRIGHTS": "", "SETACL": change.Low, "DELETEACL": change.Low,
	"GETQUOTA": "", "GETQUOTAROOT": "", "SETQUOTA": change.Low,
	"URLFETCH": "", "GENURLAUTH": change.Low, "RESETKEY": change.Low,
	"X-CANCEL": "",
}

var wantPOP3 = map[string]change.Priority{
	"USER": "", "PASS": "", "APOP": "", "AUTH": "", "CAPA": "", "STLS": "", "UTF8": "", "STAT": "", "LIST": "",
	"UIDL": "", "RETR": "", "TOP": "", "NOOP": "", "RSET": "", "QUIT": change.Low, "DELE": change.Low,
}

var wantManageSieve = map[string]change.Priority{
	"AUTHENTICATE": "", "STARTTLS": "", "LOGOUT": "", "CAPABILITY": "", "NOOP": "", "UNAUTHENTICATE": "",
	"HAVESPACE": "", "LISTSCRIPTS": "", "GETSCRIPT": "", "CHECKSCRIPT": "",
	"PUTSCRIPT": change.Low, "SETACTIVE": change.Low, "DELETESCRIPT": change.Low, "RENAMESCRIPT": change.Low,
}

func imapEvent(cmd, args, reply string) *Event {
	return &Event{
		Name: IMAPCommandFinished, Hostname: "mail-a.test",
		StartTime:  Timestamp{time.Date(2026, 11, 29, 1, 2, 3, 0, time.UTC)},
		EndTime:    Timestamp{time.Date(2026, 11, 29, 1, 2, 4, 5000, time.UTC)},
		Categories: []string{"imap", "service:imap"},
		Fields: Fields{User: "u1", Session: "s1", CmdTag: "a1", CmdName: cmd, CmdArgs: args,
			TaggedReplyState: reply, Mailbox: "INBOX"},
	}
}

func check(t *testing.T, ev *Event, want change.Priority, wantDrop DropReason) change.Change {
	t.Helper()
	c, reason := Classify(ev)
	if want == "" {
		if reason != wantDrop {
			t.Fatalf("Classify = %+v, %q; want dropped %q", c, reason, wantDrop)
		}
		return c
	}
	if reason != "" || c.Priority != want {
		t.Fatalf("Classify = priority %q, drop %q; want priority %q", c.Priority, reason, want)
	}
	if c.User != "u1" || c.Host != "mail-a.test" || c.ID == "" || c.Time.IsZero() {
		t.Fatalf("change %+v lacks user, host, id or time", c)
	}
	return c
}

func TestClassify_EveryIMAPCommand(t *testing.T) {
	if len(wantIMAP) != len(IMAPCommands) {
		t.Errorf("spec has %d IMAP commands, table %d", len(wantIMAP), len(IMAPCommands))
	}
	for cmd, want := range wantIMAP {
		t.Run(cmd, func(t *testing.T) {
			if _, ok := IMAPCommands[cmd]; !ok {
				t.Fatalf("%s missing from IMAPCommands", cmd)
			}
			args := "INBOX"
			if cmd == "FETCH" || cmd == "UID FETCH" {
				args = "1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
			}
			check(t, imapEvent(cmd, args, "OK"), want, DropReadOnly)
			// Refused before it ran (BAD): nothing changed.
			check(t, imapEvent(cmd, args, "BAD"), "", DropFailed)
			// Failed (NO) or cut off (no reply): a command that changes
			// mail may have done part of it, a low change; one that
			// changes nothing is dropped as failed.
			failed := change.Priority("")
			if want != "" {
				failed = change.Low
			}
			check(t, imapEvent(cmd, args, "NO"), failed, DropFailed)
			check(t, imapEvent(cmd, args, ""), failed, DropFailed)
			// Dovecot reports names upper case; a lower-case one still matches.
		})
	}
}

func doveadmSession(reasons ...string) *Event {
	return &Event{Name: MailUserSessionFinished, Hostname: "mail-a.test",
		EndTime:    Timestamp{time.Date(2026, 11, 29, 1, 2, 4, 0, time.UTC)},
		Categories: []string{"service:doveadm", "storage"},
		Fields:     Fields{User: "u1", Session: "s1", ReasonCode: reasons}}
}

// TestClassify_EveryDoveadmCommand: the end of a session of a doveadm
// command that changes mail is a change; dsync's own sessions (sync on the
// source, dsync-server on the destination), read-only commands, commands
// not in the table and doveadm's other events are not, or replication
// would loop.
func TestClassify_EveryDoveadmCommand(t *testing.T) {
	want := map[string]change.Priority{"save": change.High}
	for name := range DoveadmCommands {
		t.Run(name, func(t *testing.T) {
			p := want[name]
			if p == "" {
				p = change.Low
			}
			c := check(t, doveadmSession(DoveadmReasonCode(name)), p, "")
			if c.Command != "doveadm "+name {
				t.Errorf("command %q", c.Command)
			}
		})
	}
	for _, rc := range []string{"doveadm:cmd_sync", "doveadm:cmd_dsync_server", "doveadm:cmd_backup", "doveadm:cmd_fetch",
		"doveadm:cmd_purge", "doveadm:cmd_xfuture", "imap:cmd_append", ""} {
		check(t, doveadmSession(rc), "", DropDoveadm)
	}
	check(t, doveadmSession(), "", DropDoveadm)
	ev := doveadmSession(DoveadmReasonCode("expunge"))
	ev.Name = MailExpunged
	check(t, ev, "", DropDoveadm)
	for _, rc := range []string{"doveadm:cmd_sync", "doveadm:cmd_dsync_server", "doveadm:cmd_copy"} {
		ev := doveadmSession(rc)
		ev.Name = MailExpunged
		check(t, ev, "", DropDoveadm)
	}
	// doveadm move from another user's mailbox: the source user's session
	// end names no command, so its expunges are its change. As Dovecot
	// 2.3 and 2.4 sent them.
	for _, raw := range []string{
		`{"event":"mail_expunged","hostname":"mail-a.test","start_time":"2026-11-30T04:23:02.872236Z","end_time":"2026-11-30T04:23:02.885144Z","categories":["maildir","service:doveadm","mailbox","storage"],"fields":{"reason_code":["doveadm:cmd_move"],"duration":12899,"uid":1,"user":"u1","session":"EAHyMyb6DGtbbwAAYuI0Ow","mailbox":"INBOX"}}`,
		`{"event":"mail_expunged","hostname":"mail-a.test","start_time":"2026-11-30T04:23:17.945820Z","end_time":"2026-11-30T04:23:17.958043Z","categories":["maildir","storage","service:doveadm","mailbox"],"fields":{"reason_code":["doveadm:cmd_move"],"duration":12206,"user":"u1","session":"QAZAODX6DGuocAAAYuI0Ow","service":"doveadm","uid":1,"mailbox":"INBOX","namespace":"inbox"}}`,
		// A batch that moved (2.3).
		`{"event":"mail_expunged","hostname":"mail-a.test","start_time":"2026-11-30T04:23:01.339550Z","end_time":"2026-11-30T04:23:01.341676Z","categories":["maildir","service:doveadm","mailbox","storage"],"fields":{"reason_code":["doveadm:cmd_batch","doveadm:cmd_move"],"duration":2103,"uid":3,"user":"u1","session":"R5AsFCX6DGtJbwAAYuI0Ow","mailbox":"INBOX"}}`,
	} {
		real, err := Parse([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if c := check(t, &real, change.Low, ""); c.Command != "doveadm move" || c.Mailbox != "INBOX" {
			t.Errorf("%s: command %q, mailbox %q", real.Name, c.Command, c.Mailbox)
		}
	}
	// As Dovecot 2.3 sent them: a batch's session end names only the batch.
	for _, raw := range []string{
		`{"event":"mail_user_session_finished","hostname":"mail-a.test","start_time":"2026-11-29T17:20:46.605481Z","end_time":"2026-11-29T17:20:46.609992Z","categories":["storage","service:doveadm"],"fields":{"reason_code":["doveadm:cmd_flags_add"],"duration":3519,"minor_faults":108,"rss":7348224,"vsz":12357632,"user":"u1","session":"VukUJO5eDGsvYAAAjI2cfQ"}}`,
		`{"event":"mail_user_session_finished","hostname":"mail-a.test","start_time":"2026-11-30T04:23:01.338562Z","end_time":"2026-11-30T04:23:01.345724Z","categories":["service:doveadm","storage"],"fields":{"reason_code":["doveadm:cmd_batch"],"duration":7148,"utime":1,"minor_faults":230,"rss":8163328,"vsz":13168640,"user":"u1","session":"R5AsFCX6DGtJbwAAYuI0Ow"}}`,
	} {
		real, err := Parse([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		check(t, &real, change.Low, "")
	}
	if got := DoveadmReasonCode("force-resync"); got != "doveadm:cmd_force_resync" {
		t.Errorf("reason code of force-resync: %q", got)
	}
}

func TestClassify_EveryPOP3Command(t *testing.T) {
	if len(wantPOP3) != len(POP3Commands) {
		t.Errorf("spec has %d POP3 commands, table %d", len(wantPOP3), len(POP3Commands))
	}
	for cmd, want := range wantPOP3 {
		t.Run(cmd, func(t *testing.T) {
			ev := &Event{Name: POP3CommandFinished, Hostname: "mail-a.test",
				EndTime:    Timestamp{time.Now()},
				Categories: []string{"service:pop3", "pop3"},
				Fields:     Fields{User: "u1", CmdName: cmd, ReplyState: "OK"}}
			check(t, ev, want, DropReadOnly)
			ev.Fields.ReplyState = "ERR"
			check(t, ev, "", DropFailed)
		})
	}
}

// TestClassify_EveryManageSieveCommand: a ManageSieve command that saves,
// activates, deletes or renames a Sieve script is a low change, unless it
// failed (an error field: nothing was changed); the others change nothing.
func TestClassify_EveryManageSieveCommand(t *testing.T) {
	if len(wantManageSieve) != len(ManageSieveCommands) {
		t.Errorf("spec has %d ManageSieve commands, table %d", len(wantManageSieve), len(ManageSieveCommands))
	}
	for cmd, want := range wantManageSieve {
		t.Run(cmd, func(t *testing.T) {
			if _, ok := ManageSieveCommands[cmd]; !ok {
				t.Fatalf("%s missing from ManageSieveCommands", cmd)
			}
			ev := &Event{Name: ManageSieveCommandFinished, Hostname: "mail-a.test",
				EndTime:    Timestamp{time.Now()},
				Categories: []string{"managesieve", "service:managesieve"},
				Fields:     Fields{User: "u1", CmdName: cmd, CmdArgs: `"vacation"`}}
			c := check(t, ev, want, DropReadOnly)
			if want != "" && c.Command != cmd {
				t.Errorf("command %q", c.Command)
			}
			ev.Fields.Error = "Compilation failed"
			check(t, ev, "", DropFailed)
		})
	}
	ev := &Event{Name: ManageSieveCommandFinished, Hostname: "mail-a.test", EndTime: Timestamp{time.Now()},
		Fields: Fields{User: "u1", CmdName: "XFUTURE"}}
	check(t, ev, change.Low, "")
	// As Dovecot 2.3 and 2.4 sent them.
	for _, raw := range []string{
		`{"event":"managesieve_command_finished","hostname":"mail-a.test","start_time":"2026-11-29T18:52:01.762109Z","end_time":"2026-11-29T18:52:01.766432Z","categories":["managesieve","service:managesieve"],"fields":{"user":"u1","session":"8oLkyW5hvL5/AAAB","duration":4269,"cmd_name":"PUTSCRIPT","cmd_args":"\"e1s1\"","script_name":"e1s1","compile_warnings":0}}`,
		`{"event":"managesieve_command_finished","hostname":"mail-a.test","start_time":"2026-11-29T18:52:27.682165Z","end_time":"2026-11-29T18:52:27.683477Z","categories":["storage","managesieve","service:managesieve"],"fields":{"user":"u1","session":"XtFvy25hZtF/AAAB","duration":1304,"service":"sieve","cmd_name":"RENAMESCRIPT","cmd_args":"\"e1s2\" \"e1s3\"","old_script_name":"e1s2","new_script_name":"e1s3","net_in_bytes":13,"net_out_bytes":0}}`,
		`{"event":"mail_user_session_finished","hostname":"mail-a.test","start_time":"2026-11-29T18:52:51.205503Z","end_time":"2026-11-29T18:52:51.207105Z","categories":["storage","service:doveadm"],"fields":{"reason_code":["doveadm:cmd_sieve_put"],"duration":1584,"minor_faults":94,"rss":7077888,"vsz":10846208,"user":"u1","session":"wOM+DIN0DGsfHgAAxytPsA"}}`,
	} {
		real, err := Parse([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		check(t, &real, change.Low, "")
	}
	// 2.4 ends every ManageSieve session so, even one that only listed:
	// not a change.
	real, err := Parse([]byte(`{"event":"mail_user_session_finished","hostname":"mail-a.test","start_time":"2026-11-29T18:52:21.181790Z","end_time":"2026-11-29T18:52:21.189556Z","categories":["storage","managesieve","service:managesieve"],"fields":{"user":"u1","session":"L6EMy25hItd/AAAB","duration":6585,"service":"sieve"}}`))
	if err != nil {
		t.Fatal(err)
	}
	check(t, &real, "", DropEventKind)
}

func TestClassify_FetchSetsSeen(t *testing.T) {
	for args, want := range map[string]change.Priority{
		"1 (BODY[])":                             change.Low,
		"1:5 (UID body[TEXT])":                   change.Low,
		"1 (BINARY[1])":                          change.Low,
		"1 RFC822":                               change.Low,
		"1 (RFC822.TEXT)":                        change.Low,
		"1 (RFC822.SIZE RFC822)":                 change.Low,
		"1 (BODY.PEEK[])":                        "",
		"1 (BINARY.PEEK[1] FLAGS)":               "",
		"1 (RFC822.HEADER RFC822.SIZE)":          "",
		"1:* (FLAGS UID ENVELOPE BODYSTRUCTURE)": "",
	} {
		t.Run(args, func(t *testing.T) {
			check(t, imapEvent("UID FETCH", args, "OK"), want, DropReadOnly)
		})
	}
}

// TestClassify_PartOfAFailedCommand: Dovecot answers NO to a MOVE that
// moved a first batch of 1,000 messages and to a FETCH that set \Seen on
// some messages, and keeps what was done. The events are Dovecot 2.3's
// (2.4's are alike), less the fields that do not matter here.
func TestClassify_PartOfAFailedCommand(t *testing.T) {
	for _, tc := range []struct{ name, event string }{
		{"partial MOVE", `{"event":"imap_command_finished","hostname":"mail-a.test","start_time":"2026-11-29T17:05:08.697153Z","end_time":"2026-11-29T17:05:08.750234Z","categories":["service:imap","imap"],"fields":{"user":"u1","session":"TWSOS21hNJt/AAAB","cmd_tag":"T4","cmd_name":"MOVE","cmd_input_name":"MOVE","cmd_args":"1:1100 Archive","tagged_reply_state":"NO","tagged_reply":"NO [EXPUNGEISSUED] Some of the requested messages no longer exist.","mailbox":"INBOX"}}`},
		{"FETCH that set \\Seen", `{"event":"imap_command_finished","hostname":"mail-a.test","start_time":"2026-11-29T17:05:11.233417Z","end_time":"2026-11-29T17:05:11.234293Z","categories":["service:imap","imap"],"fields":{"user":"u1","session":"s9bDS21hUNx/AAAB","cmd_tag":"T5","cmd_name":"FETCH","cmd_input_name":"FETCH","cmd_args":"1:2 BINARY[1]","tagged_reply_state":"NO","tagged_reply":"NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding.","mailbox":"INBOX"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := Parse([]byte(tc.event))
			if err != nil {
				t.Fatal(err)
			}
			check(t, &ev, change.Low, "")
		})
	}
	check(t, imapEvent("FETCH", "1:2 BINARY.PEEK[1]", "NO"), "", DropFailed)
}

// TestClassify_XCancelChangesNothing: Dovecot 2.3's X-CANCEL cancels a
// running command of the session by its tag (that command's own event
// tells what it did), or answers NO when no command has the tag; as
// Dovecot 2.3 sent it (TestExporter_XCancel). 2.4 has no X-CANCEL: its
// event names the command "unknown", answered BAD.
func TestClassify_XCancelChangesNothing(t *testing.T) {
	ev, err := Parse([]byte(`{"event":"imap_command_finished","hostname":"mail-a.test","start_time":"2026-12-02T08:07:46.992308Z","end_time":"2026-12-02T08:07:46.992604Z","categories":["service:imap","imap"],"fields":{"user":"u1","local_ip":"127.0.0.1","local_port":44463,"remote_ip":"127.0.0.1","remote_port":55940,"session":"uWppI6JhhNp/AAAB","duration":118,"cmd_tag":"T2","cmd_name":"X-CANCEL","cmd_input_name":"X-CANCEL","cmd_args":"nosuchtag","cmd_human_args":"nosuchtag","tagged_reply_state":"NO","tagged_reply":"NO Command tag not found.","last_run_time":"2026-12-02T08:07:46.992297Z","running_usecs":22,"lock_wait_usecs":0,"bytes_in":9,"bytes_out":51,"reason_code":["imap:cmd_x_cancel"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	check(t, &ev, "", DropFailed)
	check(t, imapEvent("X-CANCEL", "a5", "OK"), "", DropReadOnly)
}

func TestClassify_UnknownCommandIsALowChange(t *testing.T) {
	check(t, imapEvent("XFUTURE", "", "OK"), change.Low, "")
	check(t, imapEvent("XFUTURE", "", "BAD"), "", DropFailed)
}

func TestClassify_CaseInsensitiveCommand(t *testing.T) {
	c := check(t, imapEvent("uid move", "1 Archive", "OK"), change.High, "")
	if c.Command != "UID MOVE" {
		t.Errorf("command %q", c.Command)
	}
}

func TestClassify_Delivery(t *testing.T) {
	ev := &Event{Name: MailDeliveryFinished, Hostname: "mail-a.test", EndTime: Timestamp{time.Now()},
		Categories: []string{"service:lmtp", "local-delivery"},
		Fields:     Fields{User: "u1", MessageID: "<m1@example.test>"}}
	c := check(t, ev, change.High, "")
	if c.MessageID != "<m1@example.test>" || c.Command != "" {
		t.Errorf("change %+v", c)
	}
	ev.Fields.Error = "Quota exceeded"
	check(t, ev, "", DropFailed)
}

func TestClassify_POP3ExpungeOn23(t *testing.T) {
	ev := &Event{Name: MailExpunged, Hostname: "mail-a.test", EndTime: Timestamp{time.Now()},
		Categories: []string{"service:pop3", "mailbox"}, Fields: Fields{User: "u1", Mailbox: "INBOX"}}
	check(t, ev, change.Low, "")
}

// TestClassify_Autoexpunge: a message a mailbox's autoexpunge removed, at
// the end of an IMAP session or after an LMTP delivery, as Dovecot 2.3 and
// 2.4 sent them, is a low change.
func TestClassify_Autoexpunge(t *testing.T) {
	for _, raw := range []string{
		`{"event":"mail_expunged","hostname":"mail-a.test","start_time":"2026-11-29T19:23:22.458166Z","end_time":"2026-11-29T19:23:22.460183Z","categories":["maildir","service:imap","imap","storage","mailbox"],"fields":{"reason_code":["storage:autoexpunge"],"duration":1998,"user":"u1","local_ip":"127.0.0.1","local_port":42641,"remote_ip":"127.0.0.1","remote_port":44830,"session":"Jpj9OW9hHq9/AAAB","uid":1,"mailbox":"Trash"}}`,
		`{"event":"mail_expunged","hostname":"mail-a.test","start_time":"2026-11-29T19:23:47.370019Z","end_time":"2026-11-29T19:23:47.370956Z","categories":["smtp-server","lmtp","service:lmtp","mailbox","maildir","storage"],"fields":{"reason_code":["lmtp:cmd_data","storage:autoexpunge"],"duration":921,"protocol":"lmtp","session":"c6KNFcN7DGstFwAAcEqEtA","rcpt_to":"u1","user":"u1","service":"lmtp","uid":3,"mailbox":"Trash","namespace":"inbox"}}`,
	} {
		ev, err := Parse([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if c := check(t, &ev, change.Low, ""); c.Mailbox != "Trash" {
			t.Errorf("mailbox %q", c.Mailbox)
		}
	}
}

func TestClassify_Drops(t *testing.T) {
	doveadm := imapEvent("APPEND", "INBOX", "OK")
	doveadm.Categories = []string{"service:doveadm", "mailbox"}
	check(t, doveadm, "", DropDoveadm)

	expunge := &Event{Name: MailExpunged, Categories: []string{"service:doveadm"}, Fields: Fields{User: "u1"}}
	check(t, expunge, "", DropDoveadm)

	noUser := imapEvent("APPEND", "INBOX", "OK")
	noUser.Fields.User = ""
	check(t, noUser, "", DropNoUser)

	check(t, &Event{Name: "mail_opened", Fields: Fields{User: "u1"}}, "", DropEventKind)
	check(t, &Event{Name: "auth_request_finished", Fields: Fields{User: "u1"}}, "", DropEventKind)
}

func TestClassify_MailboxDetails(t *testing.T) {
	mv := check(t, imapEvent("UID MOVE", `1:3 "Entw&APw-rfe"`, "OK"), change.High, "")
	if mv.Mailbox != "INBOX" || mv.DestinationMailbox != "Entwürfe" {
		t.Errorf("move: mailbox %q destination %q", mv.Mailbox, mv.DestinationMailbox)
	}
	cp := check(t, imapEvent("COPY", `1 Archive`, "OK"), change.High, "")
	if cp.DestinationMailbox != "Archive" {
		t.Errorf("copy destination %q", cp.DestinationMailbox)
	}
	lit := check(t, imapEvent("COPY", `1 <7 byte literal>`, "OK"), change.High, "")
	if lit.DestinationMailbox != "" {
		t.Errorf("literal destination %q, want empty", lit.DestinationMailbox)
	}
	q := check(t, imapEvent("COPY", `1 "a \"b\" c"`, "OK"), change.High, "")
	if q.DestinationMailbox != `a "b" c` {
		t.Errorf("quoted destination %q", q.DestinationMailbox)
	}
	rn := imapEvent("RENAME", "Old New", "OK")
	rn.Fields.Mailbox, rn.Fields.OldMailbox, rn.Fields.NewMailbox = "", "Old", "New"
	c := check(t, rn, change.Low, "")
	if c.Mailbox != "New" || c.OldMailbox != "Old" {
		t.Errorf("rename: %+v", c)
	}
}

func TestClassify_DeterministicID(t *testing.T) {
	a, _ := Classify(imapEvent("APPEND", "INBOX", "OK"))
	b, _ := Classify(imapEvent("APPEND", "INBOX", "OK"))
	if a.ID != b.ID {
		t.Errorf("same event gave ids %s and %s", a.ID, b.ID)
	}
	other := imapEvent("APPEND", "INBOX", "OK")
	other.Fields.CmdTag = "a2"
	c, _ := Classify(other)
	if c.ID == a.ID {
		t.Errorf("different events share id %s", a.ID)
	}
}

func TestClassify_TimeFallsBackToStart(t *testing.T) {
	ev := imapEvent("APPEND", "INBOX", "OK")
	ev.EndTime = Timestamp{}
	c, _ := Classify(ev)
	if !c.Time.Equal(ev.StartTime.Time) {
		t.Errorf("time %v, want start time %v", c.Time, ev.StartTime)
	}
}
