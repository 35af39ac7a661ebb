package doveadm

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds of ParseExcludeMailboxes: far above any real list, they keep a
// mistake (a file's contents pasted into the setting) from reaching
// every dsync request.
const (
	maxExcludeMailboxes = 100
	maxExcludeLen       = 1024
)

// ParseExcludeMailboxes reads the mailboxes dsync leaves out (Dovecot's
// doveadm sync -x, the HTTP API's excludeMailbox, Dovecot 2.3's -x in
// replication_dsync_parameters): a comma-separated list of mailbox names
// as IMAP clients show them decoded (UTF-8, with the hierarchy separator
// of the namespace: "Archive/2020"), matched case-sensitively against the
// whole name, with dsync's wildcards * and ?. White space around each is
// dropped; a name that holds a comma or begins or ends with a space takes
// ? there. Empty: none.
func ParseExcludeMailboxes(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []string
	seen := map[string]bool{}
	for _, m := range strings.Split(s, ",") {
		m = strings.TrimSpace(m)
		switch {
		case m == "":
			return nil, errors.New("an empty mailbox between commas")
		case !utf8.ValidString(m):
			return nil, fmt.Errorf("%q: not UTF-8 (give names as clients show them, not in IMAP's modified UTF-7)", m)
		case strings.ContainsFunc(m, unicode.IsControl):
			return nil, fmt.Errorf("%q: a control character", m)
		case len(m) > maxExcludeLen:
			return nil, fmt.Errorf("%.40q...: longer than %d bytes", m, maxExcludeLen)
		case strings.HasPrefix(m, `\`):
			// dsync's own documentation offers these, but Dovecot 2.3 and
			// 2.4 copy the mailbox all the same (measured: \Trash).
			return nil, fmt.Errorf("%q: dsync does not leave out mailboxes by special-use flag (Dovecot 2.3 and 2.4 copy them all the same): name the mailbox", m)
		case strings.Trim(m, "*?") == "" && strings.Contains(m, "*"):
			// dsync would then copy nothing, or next to nothing, of the
			// user's mail ("?*" is every name of a character or more).
			return nil, fmt.Errorf("%q: leaves every mailbox out", m)
		case seen[m]:
			continue
		}
		seen[m] = true
		out = append(out, m)
	}
	if len(out) > maxExcludeMailboxes {
		return nil, fmt.Errorf("%d mailboxes: want at most %d", len(out), maxExcludeMailboxes)
	}
	return out, nil
}
