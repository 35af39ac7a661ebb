package dovecot

import (
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// Event names that can carry a change.
const (
	IMAPCommandFinished  = "imap_command_finished"
	POP3CommandFinished  = "pop3_command_finished"
	MailDeliveryFinished = "mail_delivery_finished"
	MailExpunged         = "mail_expunged"
	// MailUserSessionFinished ends every session; a POP3 session's end is
	// when Dovecot writes \Seen for the messages it fetched.
	MailUserSessionFinished = "mail_user_session_finished"
	// ManageSieveCommandFinished ends each ManageSieve command
	// (Pigeonhole); a failed one carries an error field.
	ManageSieveCommandFinished = "managesieve_command_finished"
)

// DropReason says why an event causes no replication. The values are stable:
// they are metric labels and appear in explain's output.
type DropReason string

const (
	// DropDoveadm: dsync's and doveadm's own events (category
	// service:doveadm), but for the end of a session of a doveadm command
	// that changes mail (DoveadmCommands). Replicating on dsync's would
	// loop forever.
	DropDoveadm DropReason = "doveadm"
	// DropFailed: the command or delivery did not succeed and changed
	// nothing: an IMAP command answered BAD (refused before it ran), or one
	// that changes nothing anyway answered NO; a POP3 command answered
	// -ERR; a ManageSieve command or a delivery with an error.
	DropFailed DropReason = "failed"
	// DropNoUser: the event names no user, so there is nothing to sync.
	DropNoUser DropReason = "no_user"
	// DropReadOnly: a command that changes nothing replicated.
	DropReadOnly DropReason = "read_only"
	// DropEventKind: an event kind that never changes mail.
	DropEventKind DropReason = "event_kind"
)

// DropReasons lists every reason, for metrics and documentation.
var DropReasons = []DropReason{DropDoveadm, DropFailed, DropNoUser, DropReadOnly, DropEventKind}

const (
	categoryDoveadm = "service:doveadm"
	categoryPOP3    = "service:pop3"
	// reasonDoveadmMove is the reason code of doveadm move's sessions and
	// of the expunges it makes.
	reasonDoveadmMove = "doveadm:cmd_move"
)

// idSpace namespaces the deterministic change IDs (UUID version 5).
var idSpace = uuid.MustParse("6f1d3c4e-2b0a-4c55-9d3e-64766e776172")

// Classify decides whether ev changed a user's mail. It returns the change,
// or the reason the event is dropped.
func Classify(ev *Event) (change.Change, DropReason) {
	f := &ev.Fields
	var eff Effect
	doveadmCmd := ""
	if ev.HasCategory(categoryDoveadm) {
		switch ev.Name {
		case MailUserSessionFinished:
			doveadmCmd = doveadmCommand(f.ReasonCode)
		case MailExpunged:
			// doveadm move from another user ("doveadm move -u DEST
			// MAILBOX user SRC ..."): the end of SRC's session carries no
			// reason code, so the messages expunged from SRC are its
			// change. dsync's own expunges carry cmd_sync or
			// cmd_dsync_server, never this.
			if slices.Contains(f.ReasonCode, reasonDoveadmMove) {
				doveadmCmd = "move"
			}
		}
		if doveadmCmd == "" {
			return change.Change{}, DropDoveadm
		}
	}
	switch ev.Name {
	case IMAPCommandFinished:
		eff = imapEffect(f.CmdName, f.CmdArgs)
		switch f.TaggedReplyState {
		case "OK":
		case "BAD":
			return change.Change{}, DropFailed
		default:
			// NO, or no tagged reply at all (the client went away): the
			// command may have done part of its work, and Dovecot keeps
			// it. A MOVE of more than 1,000 messages commits each 1,000
			// (NO [EXPUNGEISSUED] when one of them went away), and a FETCH
			// that fails on one message keeps the \Seen flags it set on
			// the others. A low change: most such commands changed nothing,
			// and a client that retries a failing APPEND must not crowd
			// the lane for new mail.
			if eff == ReadOnly {
				return change.Change{}, DropFailed
			}
			eff = LowChange
		}
	case POP3CommandFinished:
		if f.ReplyState != "OK" {
			return change.Change{}, DropFailed
		}
		eff = ReadOnly
		if c, ok := POP3Commands[strings.ToUpper(f.CmdName)]; ok {
			eff = c.Effect
		}
	case ManageSieveCommandFinished:
		// Each ManageSieve command changes all or nothing: a script
		// that does not compile is not saved, a missing one not renamed.
		if f.Error != "" {
			return change.Change{}, DropFailed
		}
		eff = LowChange
		if c, ok := ManageSieveCommands[strings.ToUpper(f.CmdName)]; ok {
			eff = c.Effect
		}
	case MailDeliveryFinished:
		if f.Error != "" {
			return change.Change{}, DropFailed
		}
		eff = HighChange
	case MailExpunged:
		eff = LowChange
	case MailUserSessionFinished:
		switch {
		case doveadmCmd != "":
			eff = DoveadmCommands[doveadmCmd].Effect
		case ev.HasCategory(categoryPOP3):
			eff = LowChange
		default:
			return change.Change{}, DropEventKind
		}
	default:
		return change.Change{}, DropEventKind
	}
	if eff == ReadOnly {
		return change.Change{}, DropReadOnly
	}
	if f.User == "" {
		return change.Change{}, DropNoUser
	}
	c := change.Change{
		ID:        changeID(ev),
		User:      f.User,
		Host:      ev.Hostname,
		Time:      ev.EndTime.Time,
		Priority:  eff.Priority(),
		Event:     ev.Name,
		Command:   strings.ToUpper(f.CmdName),
		Mailbox:   f.Mailbox,
		Session:   f.Session,
		MessageID: f.MessageID,
	}
	if c.Time.IsZero() {
		c.Time = ev.StartTime.Time
	}
	if doveadmCmd != "" {
		c.Command = "doveadm " + doveadmCmd
	}
	switch c.Command {
	case "RENAME":
		c.Mailbox, c.OldMailbox = f.NewMailbox, f.OldMailbox
	case "COPY", "UID COPY", "MOVE", "UID MOVE":
		// The event's mailbox is the source; the destination exists only in
		// the arguments, as IMAP wrote it.
		c.DestinationMailbox = destinationMailbox(f.CmdArgs)
	}
	return c, ""
}

// doveadmCommand is the command of DoveadmCommands a session's reason
// codes name, or "".
func doveadmCommand(reasons []string) string {
	for _, r := range reasons {
		if name, ok := doveadmByReason[r]; ok {
			return name
		}
	}
	return ""
}

// imapEffect looks a command up in IMAPCommands. An unknown command that
// succeeded may be an extension we do not know yet: treat it as a low change
// rather than risk a replica that silently differs.
func imapEffect(name, args string) Effect {
	c, ok := IMAPCommands[strings.ToUpper(name)]
	if !ok {
		return LowChange
	}
	if c.Effect == SeenOnFetch {
		if fetchSetsSeen(args) {
			return LowChange
		}
		return ReadOnly
	}
	return c.Effect
}

// fetchSetsSeen reports whether FETCH arguments ask for a body section
// without .PEEK (BODY[...], BINARY[...], RFC822, RFC822.TEXT), which sets
// \Seen on a mailbox opened read-write.
func fetchSetsSeen(args string) bool {
	a := strings.ToUpper(args)
	if strings.Contains(a, "BODY[") || strings.Contains(a, "BINARY[") {
		return true
	}
	for i := 0; ; {
		j := strings.Index(a[i:], "RFC822")
		if j < 0 {
			return false
		}
		rest := a[i+j+len("RFC822"):]
		if !strings.HasPrefix(rest, ".HEADER") && !strings.HasPrefix(rest, ".SIZE") {
			return true
		}
		i += j + len("RFC822")
	}
}

// destinationMailbox returns the last argument of COPY/MOVE, unquoted and
// decoded from IMAP's modified UTF-7. It returns "" when the argument is a
// literal placeholder Dovecot could not show.
func destinationMailbox(args string) string {
	args = strings.TrimSpace(args)
	if args == "" {
		return ""
	}
	var raw string
	if strings.HasSuffix(args, `"`) {
		// Quoted string: scan back for the opening quote, honouring escapes.
		i := len(args) - 2
		for ; i >= 0; i-- {
			if args[i] == '"' && (i == 0 || args[i-1] != '\\') {
				break
			}
		}
		if i < 0 {
			return ""
		}
		raw = strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(args[i+1 : len(args)-1])
	} else {
		// Dovecot shows a literal as "<N byte literal>".
		if strings.HasSuffix(args, " literal>") || strings.HasSuffix(args, "}") {
			return ""
		}
		raw = args[strings.LastIndexByte(args, ' ')+1:]
	}
	name, err := DecodeMUTF7(raw)
	if err != nil {
		return raw
	}
	return name
}

// changeID derives the change's ID from the fields that identify one Dovecot
// event, so the same event always gets the same ID.
func changeID(ev *Event) string {
	f := &ev.Fields
	var b strings.Builder
	for _, s := range []string{
		ev.Name, ev.Hostname, ev.StartTime.Format(timeKey), ev.EndTime.Format(timeKey),
		f.User, f.Session, f.CmdTag, f.CmdName, f.CmdArgs, f.Mailbox, f.MessageID,
	} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	return uuid.NewSHA1(idSpace, []byte(b.String())).String()
}

const timeKey = "2006-01-02T15:04:05.000000000Z"
