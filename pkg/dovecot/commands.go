package dovecot

import (
	"strings"

	"github.com/dovewarden/dovewarden-knative/pkg/change"
)

// Effect is what a successful command does to the mail dsync replicates.
type Effect string

const (
	// ReadOnly commands change nothing dsync replicates; they are dropped.
	ReadOnly Effect = "read-only"
	// LowChange commands change existing mail or mailboxes.
	LowChange Effect = "low"
	// HighChange commands add new mail to a mailbox.
	HighChange Effect = "high"
	// SeenOnFetch is FETCH: it sets \Seen (a low change) when it fetches a
	// body section without .PEEK, and changes nothing otherwise.
	SeenOnFetch Effect = "seen-on-fetch"
)

// Command describes one IMAP or POP3 command.
type Command struct {
	Effect Effect
	// Spec names where the command is defined.
	Spec string
}

// IMAPCommands is the one classification table for IMAP: every command of
// RFC 9051 (IMAP4rev2) and RFC 3501, and of the extensions Dovecot
// implements, keyed by Dovecot's cmd_name (UID variants as "UID X").
//
// Priorities follow Dovecot 2.3's replication plugin: new mail is high,
// every other change low. Where a command's effect on replicated state is
// doubtful it is classified as a change: an unneeded incremental dsync costs
// tens of milliseconds, a missed one leaves the replica wrong until the
// sweep.
var IMAPCommands = map[string]Command{
	// Connection and session state: RFC 9051 6.1-6.3.
	"CAPABILITY":   {ReadOnly, "RFC 9051 6.1.1"},
	"NOOP":         {ReadOnly, "RFC 9051 6.1.2"},
	"LOGOUT":       {ReadOnly, "RFC 9051 6.1.3"},
	"STARTTLS":     {ReadOnly, "RFC 9051 6.2.1"},
	"AUTHENTICATE": {ReadOnly, "RFC 9051 6.2.2"},
	"LOGIN":        {ReadOnly, "RFC 9051 6.2.3"},
	"ENABLE":       {ReadOnly, "RFC 9051 6.3.1"},
	"SELECT":       {ReadOnly, "RFC 9051 6.3.2"},
	"EXAMINE":      {ReadOnly, "RFC 9051 6.3.3"},
	"NAMESPACE":    {ReadOnly, "RFC 9051 6.3.10"},
	"STATUS":       {ReadOnly, "RFC 9051 6.3.11"},
	"IDLE":         {ReadOnly, "RFC 9051 6.3.13"},
	"LIST":         {ReadOnly, "RFC 9051 6.3.9"},
	"LSUB":         {ReadOnly, "RFC 3501 6.3.9"},
	"XLIST":        {ReadOnly, "Gmail XLIST (Dovecot answers it as LIST)"},
	"ID":           {ReadOnly, "RFC 2971"},
	"COMPRESS":     {ReadOnly, "RFC 4978"},
	"NOTIFY":       {ReadOnly, "RFC 5465"},
	"X-STATE":      {ReadOnly, "Dovecot imap-hibernate state export"},
	"X-CANCEL":     {ReadOnly, "Dovecot 2.3: cancels a running command by its tag, whose own event tells what it did (2.4 has none)"},
	"CHECK":        {ReadOnly, "RFC 3501 6.4.1 (a checkpoint; Dovecot writes nothing new)"},
	"UNSELECT":     {ReadOnly, "RFC 9051 6.4.2 (closes without expunging)"},

	// Mailbox changes: low.
	"CREATE":      {LowChange, "RFC 9051 6.3.4"},
	"DELETE":      {LowChange, "RFC 9051 6.3.5"},
	"RENAME":      {LowChange, "RFC 9051 6.3.6"},
	"SUBSCRIBE":   {LowChange, "RFC 9051 6.3.7"},
	"UNSUBSCRIBE": {LowChange, "RFC 9051 6.3.8"},

	// New mail: high.
	"APPEND":      {HighChange, "RFC 9051 6.3.12 (also MULTIAPPEND RFC 3502, CATENATE RFC 4469)"},
	"COPY":        {HighChange, "RFC 9051 6.4.7"},
	"UID COPY":    {HighChange, "RFC 9051 6.4.9"},
	"MOVE":        {HighChange, "RFC 9051 6.4.8 (RFC 6851)"},
	"UID MOVE":    {HighChange, "RFC 9051 6.4.9"},
	"REPLACE":     {HighChange, "RFC 8508 (APPEND of the new version plus expunge)"},
	"UID REPLACE": {HighChange, "RFC 8508"},
	// Pigeonhole's imap_filter_sieve plugin: a Sieve script run over
	// existing messages, whose fileinto copies them as COPY does (and whose
	// addflag, discard and redirect change them too).
	"FILTER":     {HighChange, "Pigeonhole vnd.dovecot.filter (imap_filter_sieve)"},
	"UID FILTER": {HighChange, "Pigeonhole vnd.dovecot.filter"},

	// Message changes: low.
	"CLOSE":        {LowChange, "RFC 9051 6.4.1 (expunges \\Deleted messages)"},
	"EXPUNGE":      {LowChange, "RFC 9051 6.4.3"},
	"UID EXPUNGE":  {LowChange, "RFC 9051 6.4.9 (RFC 4315)"},
	"STORE":        {LowChange, "RFC 9051 6.4.6"},
	"UID STORE":    {LowChange, "RFC 9051 6.4.9"},
	"FETCH":        {SeenOnFetch, "RFC 9051 6.4.5"},
	"UID FETCH":    {SeenOnFetch, "RFC 9051 6.4.9"},
	"SEARCH":       {ReadOnly, "RFC 9051 6.4.4"},
	"UID SEARCH":   {ReadOnly, "RFC 9051 6.4.9"},
	"ESEARCH":      {ReadOnly, "RFC 7377 multimailbox search"},
	"SORT":         {ReadOnly, "RFC 5256"},
	"UID SORT":     {ReadOnly, "RFC 5256"},
	"THREAD":       {ReadOnly, "RFC 5256"},
	"UID THREAD":   {ReadOnly, "RFC 5256"},
	"CANCELUPDATE": {ReadOnly, "RFC 5267 CONTEXT=SEARCH"},

	// Metadata, ACL and quota.
	"GETMETADATA":  {ReadOnly, "RFC 5464"},
	"SETMETADATA":  {LowChange, "RFC 5464 (dsync replicates mailbox and server attributes)"},
	"GETACL":       {ReadOnly, "RFC 4314"},
	"MYRIGHTS":     {ReadOnly, "RFC 4314"},
	"LISTRIGHTS":   {ReadOnly, "RFC 4314"},
	"SETACL":       {LowChange, "RFC 4314 (dsync replicates mailbox ACLs)"},
	"DELETEACL":    {LowChange, "RFC 4314"},
	"GETQUOTA":     {ReadOnly, "RFC 9208"},
	"GETQUOTAROOT": {ReadOnly, "RFC 9208"},
	"SETQUOTA":     {LowChange, "RFC 9208 (kept as a change: cheap, and some quota backends live in replicated attributes)"},

	// URLAUTH: RESETKEY and GENURLAUTH change the mailbox's access key,
	// which Dovecot stores as a mailbox attribute.
	"URLFETCH":   {ReadOnly, "RFC 4467"},
	"GENURLAUTH": {LowChange, "RFC 4467 (may create the mailbox access key)"},
	"RESETKEY":   {LowChange, "RFC 4467"},
}

// POP3Commands classifies POP3 commands (RFC 1939, 2449, 2595, 5034, 6856)
// as Dovecot 2.4 reports them in pop3_command_finished. Dovecot changes
// mail only when the session ends: QUIT expunges the messages DELE marked
// (reported as mail_expunged with category service:pop3, in 2.3 too), and
// QUIT or a disconnect writes \Seen for those RETR fetched (no event of
// its own, unless pop3_no_flag_updates is set), so the exporter snippets
// send the session's end (mail_user_session_finished), which 2.3 reports
// too. QUIT stays a change for snippets that send it; DELE is the early
// trigger the 2.4 snippet sends.
var POP3Commands = map[string]Command{
	"USER": {ReadOnly, "RFC 1939"},
	"PASS": {ReadOnly, "RFC 1939"},
	"APOP": {ReadOnly, "RFC 1939"},
	"AUTH": {ReadOnly, "RFC 5034"},
	"CAPA": {ReadOnly, "RFC 2449"},
	"STLS": {ReadOnly, "RFC 2595"},
	"UTF8": {ReadOnly, "RFC 6856"},
	"STAT": {ReadOnly, "RFC 1939"},
	"LIST": {ReadOnly, "RFC 1939"},
	"UIDL": {ReadOnly, "RFC 1939"},
	"RETR": {ReadOnly, "RFC 1939 (\\Seen is written at QUIT)"},
	"TOP":  {ReadOnly, "RFC 1939"},
	"NOOP": {ReadOnly, "RFC 1939"},
	"RSET": {ReadOnly, "RFC 1939"},
	"DELE": {LowChange, "RFC 1939"},
	"QUIT": {LowChange, "RFC 1939 (commits DELE and \\Seen)"},
}

// DoveadmCommands are the doveadm commands that change what dsync
// replicates, as an administrator types them. Dovecot ends each user's
// session of a doveadm command with mail_user_session_finished, category
// service:doveadm, reason code "doveadm:cmd_" and the name with "_" for
// spaces and dashes (DoveadmReasonCode); that event is the change, so that
// an administrator's change (the nightly expunge of old Trash, a flag
// set by a script) replicates as Dovecot 2.3's replicator replicated it.
//
// Unlike IMAP's table, a command not listed here is dropped: dsync itself
// runs as doveadm (sync on one side, dsync-server on the other), and
// replicating on its sessions would never end. Every change is low, even a
// copy or move: doveadm's work is bulk work (-A runs it for every user),
// and must not crowd the lane for new mail; save, which delivers one
// message as an LDA would, is high. Each row's reason code was read off
// Dovecot 2.3, most also off 2.4, which names them the same; Pigeonhole's
// sieve commands off both.
var DoveadmCommands = map[string]Command{
	"flags add":              {LowChange, "doveadm-flags(1)"},
	"flags remove":           {LowChange, "doveadm-flags(1)"},
	"flags replace":          {LowChange, "doveadm-flags(1)"},
	"expunge":                {LowChange, "doveadm-expunge(1)"},
	"copy":                   {LowChange, "doveadm-move(1)"},
	"move":                   {LowChange, "doveadm-move(1)"},
	"deduplicate":            {LowChange, "doveadm-deduplicate(1)"},
	"import":                 {LowChange, "doveadm-import(1)"},
	"save":                   {HighChange, "doveadm-save(1)"},
	"mailbox create":         {LowChange, "doveadm-mailbox(1)"},
	"mailbox delete":         {LowChange, "doveadm-mailbox(1)"},
	"mailbox rename":         {LowChange, "doveadm-mailbox(1)"},
	"mailbox subscribe":      {LowChange, "doveadm-mailbox(1)"},
	"mailbox unsubscribe":    {LowChange, "doveadm-mailbox(1)"},
	"mailbox update":         {LowChange, "doveadm-mailbox(1) (UIDVALIDITY, next UID, modseq)"},
	"mailbox metadata set":   {LowChange, "doveadm-mailbox(1)"},
	"mailbox metadata unset": {LowChange, "doveadm-mailbox(1)"},
	"acl set":                {LowChange, "doveadm-acl(1)"},
	"acl add":                {LowChange, "doveadm-acl(1)"},
	"acl remove":             {LowChange, "doveadm-acl(1)"},
	"acl delete":             {LowChange, "doveadm-acl(1)"},
	"force-resync":           {LowChange, "doveadm-force-resync(1) (a rebuilt index can differ)"},
	// Dovecot 2.3's batch runs several commands in one session per user,
	// whose end names only cmd_batch: replicated whatever it ran.
	"batch": {LowChange, "doveadm-batch(1), Dovecot 2.3"},
	// Pigeonhole's doveadm plugin, which also lets dsync replicate Sieve
	// scripts (stored for it as INBOX attributes).
	"sieve put":        {LowChange, "doveadm-sieve(1)"},
	"sieve activate":   {LowChange, "doveadm-sieve(1)"},
	"sieve deactivate": {LowChange, "doveadm-sieve(1)"},
	"sieve delete":     {LowChange, "doveadm-sieve(1)"},
	"sieve rename":     {LowChange, "doveadm-sieve(1)"},
}

// ManageSieveCommands classifies ManageSieve commands (RFC 5804) as
// Pigeonhole reports them in managesieve_command_finished, on 2.3 and 2.4.
// A user's Sieve scripts (Roundcube's filters and vacation replies are
// such scripts) and which one is active are what dsync replicates when
// Pigeonhole's doveadm plugin is installed. A command not listed here is a
// low change, as in IMAP's table.
var ManageSieveCommands = map[string]Command{
	"AUTHENTICATE":   {ReadOnly, "RFC 5804"},
	"STARTTLS":       {ReadOnly, "RFC 5804"},
	"LOGOUT":         {ReadOnly, "RFC 5804"},
	"CAPABILITY":     {ReadOnly, "RFC 5804"},
	"NOOP":           {ReadOnly, "RFC 5804"},
	"UNAUTHENTICATE": {ReadOnly, "RFC 5804"},
	"HAVESPACE":      {ReadOnly, "RFC 5804"},
	"LISTSCRIPTS":    {ReadOnly, "RFC 5804"},
	"GETSCRIPT":      {ReadOnly, "RFC 5804"},
	"CHECKSCRIPT":    {ReadOnly, "RFC 5804 (compiles, saves nothing)"},
	"PUTSCRIPT":      {LowChange, "RFC 5804"},
	"SETACTIVE":      {LowChange, "RFC 5804 (\"\" deactivates)"},
	"DELETESCRIPT":   {LowChange, "RFC 5804"},
	"RENAMESCRIPT":   {LowChange, "RFC 5804"},
}

// DoveadmReasonCode is the reason code of a doveadm command's sessions:
// "doveadm:cmd_flags_add" for "flags add".
func DoveadmReasonCode(command string) string {
	return "doveadm:cmd_" + strings.NewReplacer(" ", "_", "-", "_").Replace(command)
}

// doveadmByReason is DoveadmCommands by reason code.
var doveadmByReason = func() map[string]string {
	m := make(map[string]string, len(DoveadmCommands))
	for name := range DoveadmCommands {
		m[DoveadmReasonCode(name)] = name
	}
	return m
}()

// Priority maps a change effect to its replication lane.
func (e Effect) Priority() change.Priority {
	if e == HighChange {
		return change.High
	}
	return change.Low
}
