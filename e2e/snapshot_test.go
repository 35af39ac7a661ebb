package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// serverMetadataEntries are the server annotations (METADATA on mailbox
// "") the scenarios write. Dovecot does not enumerate server entries
// (GETMETADATA "" with DEPTH infinity returns none), so the snapshot reads
// these by name; mailbox annotations are enumerated.
var serverMetadataEntries = []string{"/private/comment", "/shared/comment"}

// snapshot is one user's whole visible state on one server, as sorted
// lines: mailboxes, subscriptions, ACLs, METADATA, and per mailbox its
// messages (by Message-ID and a hash of the whole message, never by UID,
// which differs between servers) with their flags and keywords.
type snapshot struct {
	server, user string
	lines        []string
}

// readSnapshot logs in to in as user over IMAP and reads everything. It
// only reads (EXAMINE, BODY.PEEK): the commands it sends are read-only
// for Dovecot and dropped by ingest.
//
// Never call it on a replica for a user that was not synced there yet:
// Dovecot 2.3 then creates the user's INBOX (and auto-created folders)
// with GUIDs of its own, and every later dsync of the user fails.
func readSnapshot(ctx context.Context, in *dovecottest.Instance, user string) (*snapshot, error) {
	s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, user, password)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	snap := &snapshot{server: in.Name, user: user}
	cmd := func(c string) ([]string, error) {
		untagged, tagged, err := s.Cmd(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("%s on %s: %w", c, in.Name, err)
		}
		if !dovecottest.IsOK(tagged) {
			return nil, fmt.Errorf("%s on %s: %s", c, in.Name, tagged)
		}
		return untagged, nil
	}
	add := func(format string, args ...any) { snap.lines = append(snap.lines, fmt.Sprintf(format, args...)) }

	lines, err := cmd(`LIST "" "*"`)
	if err != nil {
		return nil, err
	}
	var mailboxes []string
	for _, l := range lines {
		name, attrs, ok := listEntry(l)
		if !ok {
			continue
		}
		if attrs[`\noselect`] || attrs[`\nonexistent`] {
			continue
		}
		mailboxes = append(mailboxes, name)
		add("mailbox %q", name)
	}
	if lines, err = cmd(`LIST (SUBSCRIBED) "" "*"`); err != nil {
		return nil, err
	}
	for _, l := range lines {
		if name, _, ok := listEntry(l); ok {
			add("subscribed %q", name)
		}
	}
	for _, mb := range mailboxes {
		q := dovecottest.Quote(mb)
		if _, err := cmd("EXAMINE " + q); err != nil {
			return nil, err
		}
		if lines, err = cmd("UID FETCH 1:* (FLAGS BODY.PEEK[])"); err != nil {
			return nil, err
		}
		for _, l := range lines {
			m, err := fetchedMessage(l)
			if err != nil {
				return nil, err
			}
			if m != "" {
				add("message %q %s", mb, m)
			}
		}
		if lines, err = cmd("GETMETADATA (DEPTH infinity) " + q + " (/private /shared)"); err != nil {
			return nil, err
		}
		for _, kv := range metadataEntries(lines) {
			add("metadata %q %s", mb, kv)
		}
		if lines, err = cmd("GETACL " + q); err != nil {
			return nil, err
		}
		for _, l := range lines {
			if acl := aclEntries(l); acl != "" {
				add("acl %q %s", mb, acl)
			}
		}
	}
	if lines, err = cmd(`GETMETADATA "" (` + strings.Join(serverMetadataEntries, " ") + ")"); err != nil {
		return nil, err
	}
	for _, kv := range metadataEntries(lines) {
		add("server-metadata %s", kv)
	}
	_, _, _ = s.Cmd(ctx, "LOGOUT")
	if err := readSieve(ctx, in, user, add); err != nil {
		return nil, err
	}
	sort.Strings(snap.lines)
	return snap, nil
}

// readSieve adds the user's Sieve scripts (name and a hash of the script)
// and which one is active, read over ManageSieve: LISTSCRIPTS and
// GETSCRIPT change nothing and the exporter snippets do not send them.
func readSieve(ctx context.Context, in *dovecottest.Instance, user string, add func(string, ...any)) error {
	ms, err := dovecottest.LoginManageSieve(ctx, in.ManageSieveAddr, user, password)
	if err != nil {
		return fmt.Errorf("ManageSieve on %s: %w", in.Name, err)
	}
	defer ms.Close()
	names, active, err := ms.ListScripts(ctx)
	if err != nil {
		return fmt.Errorf("LISTSCRIPTS on %s: %w", in.Name, err)
	}
	for _, name := range names {
		script, err := ms.GetScript(ctx, name)
		if err != nil {
			return fmt.Errorf("GETSCRIPT %q on %s: %w", name, in.Name, err)
		}
		sum := sha256.Sum256([]byte(script))
		add("sieve %q script=%s", name, hex.EncodeToString(sum[:6]))
	}
	if active != "" {
		add("sieve-active %q", active)
	}
	_ = ms.Logout(ctx)
	return nil
}

// listEntry parses "* LIST (attrs) delim name" into the name and the
// lower-cased attributes.
func listEntry(line string) (string, map[string]bool, bool) {
	t, err := parseIMAP(line)
	if err != nil || len(t) < 5 || str(t[1]) != "LIST" {
		return "", nil, false
	}
	attrs := map[string]bool{}
	if l, ok := t[2].([]any); ok {
		for _, a := range l {
			attrs[strings.ToLower(str(a))] = true
		}
	}
	return str(t[4]), attrs, true
}

// fetchedMessage renders "* N FETCH (... FLAGS (...) BODY[] {n}...)" as
// "<message-id> body=HASH flags=[...]" (\Recent, a session flag, left
// out). Untagged lines that are not FETCH give "".
func fetchedMessage(line string) (string, error) {
	t, err := parseIMAP(line)
	if err != nil {
		return "", err
	}
	if len(t) < 4 || str(t[2]) != "FETCH" {
		return "", nil
	}
	items, _ := t[3].([]any)
	var flags []string
	body, haveBody := "", false
	for i := 0; i+1 < len(items); i += 2 {
		switch k := strings.ToUpper(str(items[i])); k {
		case "FLAGS":
			l, _ := items[i+1].([]any)
			for _, f := range l {
				if !strings.EqualFold(str(f), `\Recent`) {
					flags = append(flags, str(f))
				}
			}
		case "BODY[]":
			body, haveBody = str(items[i+1]), true
		}
	}
	if !haveBody {
		// A flag update pushed by the server, not an answer to our FETCH.
		return "", nil
	}
	sort.Strings(flags)
	sum := sha256.Sum256([]byte(body))
	return fmt.Sprintf("%s body=%s flags=[%s]", messageID(body), hex.EncodeToString(sum[:6]), strings.Join(flags, " ")), nil
}

// messageID returns the Message-ID header of a message, or "<none>".
func messageID(msg string) string {
	head, _, _ := strings.Cut(msg, "\r\n\r\n")
	for _, l := range strings.Split(head, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Message-ID") {
			return strings.TrimSpace(v)
		}
	}
	return "<none>"
}

// metadataEntries renders "* METADATA mailbox (entry value ...)" lines as
// sorted "entry=value" strings.
func metadataEntries(lines []string) []string {
	var out []string
	for _, l := range lines {
		t, err := parseIMAP(l)
		if err != nil || len(t) < 4 || str(t[1]) != "METADATA" {
			continue
		}
		kv, _ := t[3].([]any)
		for i := 0; i+1 < len(kv); i += 2 {
			if _, isNil := kv[i+1].(nilValue); isNil {
				continue
			}
			out = append(out, fmt.Sprintf("%s=%q", str(kv[i]), str(kv[i+1])))
		}
	}
	sort.Strings(out)
	return out
}

// aclEntries renders "* ACL mailbox id rights id rights ..." as sorted
// "id=rights" pairs.
func aclEntries(line string) string {
	t, err := parseIMAP(line)
	if err != nil || len(t) < 3 || str(t[1]) != "ACL" {
		return ""
	}
	var pairs []string
	for i := 3; i+1 < len(t); i += 2 {
		pairs = append(pairs, str(t[i])+"="+str(t[i+1]))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, " ")
}

// equal reports whether two snapshots hold the same lines.
func (s *snapshot) equal(o *snapshot) bool {
	return strings.Join(s.lines, "\n") == strings.Join(o.lines, "\n")
}

// count returns how many lines start with prefix.
func (s *snapshot) count(prefix string) int {
	n := 0
	for _, l := range s.lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// has reports whether some line contains every one of parts.
func (s *snapshot) has(parts ...string) bool {
	for _, l := range s.lines {
		all := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// diff lists the lines only one side has (as a multiset: a message held
// twice on one side and once on the other shows once).
func diff(a, b *snapshot) string {
	count := map[string]int{}
	for _, l := range a.lines {
		count[l]++
	}
	for _, l := range b.lines {
		count[l]--
	}
	var only []string
	for l, n := range count {
		for ; n > 0; n-- {
			only = append(only, fmt.Sprintf("  only on %s: %s", a.server, l))
		}
		for ; n < 0; n++ {
			only = append(only, fmt.Sprintf("  only on %s: %s", b.server, l))
		}
	}
	sort.Strings(only)
	return strings.Join(only, "\n")
}

func (s *snapshot) String() string {
	return fmt.Sprintf("%s on %s:\n  %s", s.user, s.server, strings.Join(s.lines, "\n  "))
}
