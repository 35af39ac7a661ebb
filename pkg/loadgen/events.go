package loadgen

import (
	"fmt"
	"strings"
)

// The event shapes below follow events captured from Dovecot 2.3.19 and
// 2.4.1 (testdata/dovecot-*-events.jsonl): field names, which fields a
// command has (NOOP and EXPUNGE have no cmd_args, LIST and NOOP no mailbox,
// RENAME has old_mailbox/new_mailbox), reply texts and the per-version
// differences. Both versions carry cmd_input_name and reason_code; 2.3 says
// bytes_in/bytes_out where 2.4 says net_in_bytes/net_out_bytes, orders
// categories differently and adds "service" to deliveries.
//
// Templates are JSON text with ${slot} placeholders. Literal parts are
// already JSON-escaped; slot values never need escaping (digits, base64,
// fixed mailbox names), which is what lets the generator append bytes
// without an encoder.

// imapCommand describes one IMAP command's imap_command_finished event.
type imapCommand struct {
	name string
	// args is cmd_args (and cmd_human_args); empty means Dovecot omits both.
	args string
	// mailbox holds the JSON members naming the mailbox; empty for none.
	mailbox string
	ok      string // tagged_reply when OK
	// no, noArgs, noMailbox override reply, args and mailbox members for
	// the failed (NO) variant where Dovecot's differ from the defaults.
	no, noArgs, noMailbox string
	no23                  string // 2.3's NO reply when it differs from 2.4's
	bad                   string // reason in the BAD reply
	reasons               string // extra reason_code entries, JSON-quoted
}

const (
	selected = `"mailbox":"${mailbox}"`
	folder   = `Projects/p${fnum}`
	inFolder = `"mailbox":"` + folder + `"`
	noFolder = `NO [NONEXISTENT] Mailbox doesn't exist: ` + folder
)

// imapCommands is the table of IMAP commands a mix can name.
var imapCommands = []imapCommand{
	{name: "APPEND", args: `${mailbox} (\\Seen) <${size} byte literal>`, mailbox: selected,
		ok:     `OK [APPENDUID ${uidvalidity} ${uid}] Append completed.`,
		noArgs: folder + ` <${size} byte literal>`, noMailbox: "-",
		no: `NO [TRYCREATE] Mailbox doesn't exist: ` + folder},
	{name: "STORE", args: `${seq} +FLAGS (\\Flagged)`, mailbox: selected, ok: `OK Store completed.`, bad: "Invalid messageset"},
	{name: "UID STORE", args: `${uid} +FLAGS.SILENT (\\Seen)`, mailbox: selected, ok: `OK Store completed.`, bad: "Invalid uidset"},
	{name: "COPY", args: `${seq} \"${dest}\"`, mailbox: selected,
		ok: `OK [COPYUID ${uidvalidity} ${uid} ${uid2}] Copy completed.`, bad: "Invalid messageset",
		no: `NO [TRYCREATE] Mailbox doesn't exist: ${dest}`},
	{name: "UID COPY", args: `${uid} \"${dest}\"`, mailbox: selected,
		ok: `OK [COPYUID ${uidvalidity} ${uid} ${uid2}] Copy completed.`, bad: "Invalid uidset",
		no: `NO [TRYCREATE] Mailbox doesn't exist: ${dest}`},
	{name: "MOVE", args: `${seq} \"${dest}\"`, mailbox: selected, ok: `OK Move completed.`, bad: "Invalid messageset",
		no: `NO [TRYCREATE] Mailbox doesn't exist: ${dest}`},
	{name: "UID MOVE", args: `${uid} \"${dest}\"`, mailbox: selected, ok: `OK Move completed.`, bad: "Invalid uidset",
		no: `NO [TRYCREATE] Mailbox doesn't exist: ${dest}`},
	{name: "EXPUNGE", mailbox: selected, ok: `OK Expunge completed.`},
	{name: "UID EXPUNGE", args: `${uid}`, mailbox: selected, ok: `OK Expunge completed.`, bad: "Invalid uidset"},
	{name: "CLOSE", mailbox: selected, ok: `OK Close completed.`},
	{name: "CREATE", args: folder, mailbox: inFolder, ok: `OK Create completed.`, no: `NO [ALREADYEXISTS] Mailbox already exists`},
	{name: "DELETE", args: folder, mailbox: inFolder, ok: `OK Delete completed.`, no: noFolder},
	{name: "RENAME", args: folder + ` Archive/p${fnum}`,
		mailbox: `"old_mailbox":"` + folder + `","new_mailbox":"Archive/p${fnum}"`, ok: `OK Rename completed.`, no: noFolder},
	{name: "SUBSCRIBE", args: folder, mailbox: inFolder, ok: `OK Subscribe completed.`, no: noFolder},
	{name: "UNSUBSCRIBE", args: folder, mailbox: inFolder, ok: `OK Unsubscribe completed.`, no: noFolder},
	{name: "SETMETADATA", mailbox: `"mailbox":"INBOX"`, ok: `OK Setmetadata completed.`,
		no: `NO [CANNOT] Generic mailbox attributes not enabled`},
	{name: "SELECT", args: `${mailbox}`, mailbox: selected, ok: `OK [READ-WRITE] Select completed`,
		noArgs: folder, noMailbox: inFolder, no: noFolder, no23: `NO Mailbox doesn't exist: ` + folder},
	{name: "EXAMINE", args: `${mailbox}`, mailbox: selected, ok: `OK [READ-ONLY] Examine completed`,
		noArgs: folder, noMailbox: inFolder, no: noFolder, no23: `NO Mailbox doesn't exist: ` + folder},
	{name: "STATUS", args: `${mailbox} (MESSAGES UNSEEN UIDNEXT)`, mailbox: selected, ok: `OK Status completed.`},
	{name: "FETCH", args: `${seq} (UID RFC822.SIZE FLAGS BODY.PEEK[])`, mailbox: selected, ok: `OK Fetch completed.`,
		bad: "Invalid messageset", reasons: `,"imap:fetch_body"`},
	{name: "UID FETCH", args: `${uid}:* (FLAGS)`, mailbox: selected, ok: `OK Fetch completed.`, bad: "Invalid uidset"},
	{name: "UID SEARCH", args: `UID ${uid}:* NOT DELETED`, mailbox: selected, ok: `OK Search completed`},
	{name: "LIST", args: `\"\" *`, ok: `OK List completed.`},
	{name: "NOOP", ok: `OK NOOP completed.`},
}

// otherKind is an event that is not an IMAP command.
type otherKind struct {
	name     string
	v23, v24 string // templates per version
}

// Members shared by several templates.
const (
	head = `{"event":"%s","hostname":"${host}","start_time":"${start}","end_time":"${end}","categories":%s,"fields":{`
	conn = `"user":"${user}","local_ip":"${localip}","local_port":%d,"remote_ip":"${remoteip}","remote_port":${rport},`
	lmtp = `"duration":${dur},"protocol":"lmtp","remote_ip":"${remoteip}","remote_port":${rport},` +
		`"connection_id":"${lsession}","session":"${lsession}",%s"transaction_id":"${lsession}",` +
		`"mail_from":"sender${fnum}@example.net","mail_from_raw":"sender${fnum}@example.net",` +
		`"rcpt_to":"${user}@loadgen.test","user":"${user}",%s"message_id":"<${msgid}@example.net>",` +
		`"message_subject":"Load test ${fnum}","message_from":"sender${fnum}@example.net",` +
		`"message_size":${size},"message_vsize":${vsize}}}`
)

// otherKinds are the non-IMAP events a mix can name. DOVEADM EXPUNGE was not
// captured; it follows the POP3 expunge with doveadm's service category.
var otherKinds = []otherKind{
	{name: "LMTP",
		v23: fmt.Sprintf(head, "mail_delivery_finished", `["local-delivery","lmtp","smtp-server","service:lmtp"]`) +
			`"reason_code":["lmtp:cmd_data"],` + fmt.Sprintf(lmtp, "", ""),
		v24: fmt.Sprintf(head, "mail_delivery_finished", `["local-delivery","storage","lmtp","service:lmtp","smtp-server"]`) +
			`"reason_code":["lmtp:cmd_data"],` +
			fmt.Sprintf(lmtp, `"net_in_bytes":${in},"net_out_bytes":${out},`, `"service":"lmtp",`)},
	{name: "POP3 DELE",
		// 2.3 has no POP3 command event: the deletion shows at QUIT.
		v23: fmt.Sprintf(head, "mail_expunged", `["mailbox","storage","maildir","service:pop3"]`) +
			`"reason_code":["pop3:cmd_quit"],"duration":${dur},"uid":${uid},"user":"${user}","session":"${session}","mailbox":"INBOX"}}`,
		v24: fmt.Sprintf(head, "pop3_command_finished", `["service:pop3","pop3"]`) + fmt.Sprintf(conn, 995) +
			`"duration":${dur},"cmd_name":"DELE","cmd_args":"${seq}","cmd_input_name":"DELE","reply_state":"OK",` +
			`"net_in_bytes":${in},"net_out_bytes":${out}}}`},
	{name: "DOVEADM EXPUNGE",
		v23: fmt.Sprintf(head, "mail_expunged", `["mailbox","storage","maildir","service:doveadm"]`) +
			`"duration":${dur},"uid":${uid},"user":"${user}","mailbox":"${mailbox}"}}`,
		v24: fmt.Sprintf(head, "mail_expunged", `["maildir","storage","service:doveadm","mailbox"]`) +
			`"duration":${dur},"user":"${user}","uid":${uid},"service":"doveadm","mailbox":"${mailbox}","namespace":"inbox"}}`},
}

// source returns the template text for kind k in version v.
func (k kind) source(v Version) string {
	if k.other != nil {
		if v == V23 {
			return k.other.v23
		}
		return k.other.v24
	}
	return imapSource(v, k.imap, k.state)
}

func imapSource(v Version, c *imapCommand, state string) string {
	args, mailbox, reply := c.args, c.mailbox, c.ok
	switch state {
	case "NO":
		reply = `NO [SERVERBUG] Internal error occurred. Refer to server log for more information.`
		if c.no != "" {
			reply = c.no
		}
		if v == V23 && c.no23 != "" {
			reply = c.no23
		}
		if c.noArgs != "" {
			args = c.noArgs
		}
		if c.noMailbox == "-" {
			mailbox = ""
		} else if c.noMailbox != "" {
			mailbox = c.noMailbox
		}
	case "BAD":
		why := c.bad
		if why == "" {
			why = "Invalid arguments."
		}
		reply = "BAD Error in IMAP command " + c.name + ": " + why
	}
	categories := `["service:imap","imap"]`
	if v == V23 {
		categories = `["imap","service:imap"]`
	}
	var b strings.Builder
	b.WriteString(fmt.Sprintf(head, "imap_command_finished", categories))
	b.WriteString(fmt.Sprintf(conn, 993))
	b.WriteString(`"session":"${session}","duration":${dur},`)
	if v == V23 {
		b.WriteString(`"cmd_tag":"${tag}",`)
	}
	b.WriteString(`"cmd_name":"` + c.name + `","cmd_input_name":"` + c.name + `",`)
	if args != "" {
		b.WriteString(`"cmd_args":"` + args + `","cmd_human_args":"` + args + `",`)
	}
	b.WriteString(`"tagged_reply_state":"` + state + `","tagged_reply":"` + reply + `",`)
	b.WriteString(`"last_run_time":"${lastrun}","running_usecs":${running},"lock_wait_usecs":${lockwait},`)
	if v == V23 {
		b.WriteString(`"bytes_in":${in},"bytes_out":${out},`)
	} else {
		b.WriteString(`"net_in_bytes":${in},"net_out_bytes":${out},"cmd_tag":"${tag}",`)
	}
	b.WriteString(`"reason_code":["imap:cmd_` + strings.ToLower(strings.ReplaceAll(c.name, " ", "_")) + `"` + c.reasons + `]`)
	if mailbox != "" {
		b.WriteString("," + mailbox)
	}
	b.WriteString("}}")
	return b.String()
}
