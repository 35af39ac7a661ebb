// Package userlist reads a list of usernames kept in a file by an
// administrator, such as local mode's excluded users: one username per
// line; '#' at the start of a line or after white space starts a comment
// ("alice  # on leave" names alice, and so "team #1" names team), blank
// lines are skipped, and space around a name is ignored. A name with both
// white space and a '#' ("alice# on leave") is refused. Each name is
// normalised like the events' (Dovecot's auth_username_format) so that it
// names the same user, and must be a username doveadm accepts.
package userlist

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"unicode"
	"unicode/utf8"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

// maxLine bounds one line in bytes; a username has at most
// doveadm.MaxUserLen, the rest leaves room for space and comments.
const maxLine = 4096

// MaxUsers bounds the names in one list (before duplicates are removed),
// so that a wrong file (a mail spool, a log) is refused rather than read
// into memory whole: ten times the 100,000 users the sweep is sized for.
const MaxUsers = 1_000_000

// MaxFile bounds a list's file in bytes: MaxUsers lines of 256 bytes,
// a username's longest (doveadm.MaxUserLen) and its line end, or as many
// shorter names with their comments. A larger file is the wrong one (a
// log, a mail spool) or a device that never ends, and is refused after
// reading no more of it than that.
const MaxFile = 256 << 20

// maxFile is MaxFile, lowered by tests.
var maxFile int64 = MaxFile

// Parse reads r and returns its usernames, normalised with format, sorted
// and without duplicates. An error names the first bad line; nothing is
// returned with it, so a caller keeps the list it had.
func Parse(r io.Reader, format dovecot.UsernameFormat) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxLine)
	var users []string
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if n == 1 {
			// A file saved as "UTF-8 with BOM": the mark is no part of
			// the first name.
			line = bytes.TrimPrefix(line, []byte("\ufeff"))
		}
		if i := commentStart(line); i >= 0 {
			line = line[:i]
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		// The name as written, then as normalised: lower-casing would
		// turn bytes that are not UTF-8 into U+FFFD.
		user := string(line)
		if bytes.IndexByte(line, '#') >= 0 && bytes.IndexFunc(line, unicode.IsSpace) >= 0 {
			// A comment without a blank before its '#' ("alice# on
			// leave"): not a user to guess at.
			return nil, fmt.Errorf("line %d: %q: a comment starts with '#' after a blank", n, user)
		}
		user, err := doveadm.NormalizeUser(user, format)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(users) == MaxUsers {
			return nil, fmt.Errorf("line %d: more than %d users", n, MaxUsers)
		}
		users = append(users, user)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("line %d: longer than %d bytes", n+1, maxLine)
		}
		return nil, err
	}
	slices.Sort(users)
	return slices.Compact(users), nil
}

// commentStart returns where a comment starts in line: a '#' first in the
// line or after white space (the white space bytes.TrimSpace trims: a
// no-break space pasted from a web page counts); -1 if none. A '#' inside
// a name ("a#b") is part of it.
func commentStart(line []byte) int {
	for i, c := range line {
		if c != '#' {
			continue
		}
		if i == 0 {
			return i
		}
		if r, _ := utf8.DecodeLastRune(line[:i]); unicode.IsSpace(r) {
			return i
		}
	}
	return -1
}

// Load parses the file at path, refusing one over MaxFile bytes; errors
// name it.
func Load(path string, format dovecot.UsernameFormat) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &io.LimitedReader{R: f, N: maxFile + 1}
	users, err := Parse(r, format)
	if r.N <= 0 {
		// Cut off past the bound: whatever Parse made of it.
		return nil, fmt.Errorf("%s: larger than %d bytes, too large for a list of users: is it the right file?", path, maxFile)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return users, nil
}
