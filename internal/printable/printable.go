// Package printable shows text from outside (doveadm, a server, an
// event) safely on a terminal.
package printable

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String shows the control characters of s (C0, DEL, C1: ESC begins a
// terminal's escape sequences) as Go escapes, so that text from doveadm,
// a server or an event cannot drive the terminal it is printed on. Bytes
// that are not UTF-8 are shown escaped too: a lone 0x9b is CSI, the
// 8-bit ESC [, to a terminal that reads 8-bit controls. So are Unicode's
// format characters and line and paragraph separators, which show
// nothing or break the line: U+202E, the right-to-left override, prints
// the rest of a line backwards, and a zero-width space makes two names
// look the same.
func String(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, hidden) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case hidden(r):
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// hidden: a rune a terminal does not show as itself.
func hidden(r rune) bool {
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp)
}
