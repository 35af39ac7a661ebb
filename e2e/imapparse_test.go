package e2e

import (
	"fmt"
	"strconv"
	"strings"
)

// The snapshot reads Dovecot over raw IMAP (dovecottest.IMAPSession, which
// inlines literals as "{N}\r\n" plus N bytes) and parses the few response
// shapes it needs with this small tokenizer. It does not use go-imap's
// client: its GETMETADATA puts the options after the mailbox name, which
// Dovecot refuses (RFC 5464 wants them first).

// nilValue is IMAP's NIL.
type nilValue struct{}

// parseIMAP splits one response line into atoms and strings (string),
// NIL (nilValue) and parenthesised lists ([]any).
func parseIMAP(line string) ([]any, error) {
	p := &imapParser{s: line}
	out, err := p.list(false)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", abbreviate(line, 200), err)
	}
	return out, nil
}

type imapParser struct {
	s string
	i int
}

func (p *imapParser) list(nested bool) ([]any, error) {
	var out []any
	for {
		for p.i < len(p.s) && p.s[p.i] == ' ' {
			p.i++
		}
		if p.i >= len(p.s) {
			if nested {
				return nil, fmt.Errorf("unclosed list")
			}
			return out, nil
		}
		switch c := p.s[p.i]; c {
		case '(':
			p.i++
			l, err := p.list(true)
			if err != nil {
				return nil, err
			}
			out = append(out, l)
		case ')':
			if !nested {
				return nil, fmt.Errorf("unexpected ) at %d", p.i)
			}
			p.i++
			return out, nil
		case '"':
			s, err := p.quoted()
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		case '{':
			s, err := p.literal()
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		default:
			a := p.atom()
			if strings.EqualFold(a, "NIL") {
				out = append(out, nilValue{})
			} else {
				out = append(out, a)
			}
		}
	}
}

func (p *imapParser) quoted() (string, error) {
	var b strings.Builder
	for p.i++; p.i < len(p.s); p.i++ {
		switch c := p.s[p.i]; c {
		case '\\':
			p.i++
			if p.i < len(p.s) {
				b.WriteByte(p.s[p.i])
			}
		case '"':
			p.i++
			return b.String(), nil
		default:
			b.WriteByte(c)
		}
	}
	return "", fmt.Errorf("unterminated quoted string")
}

// literal reads "{N}\r\n" or "{N+}\r\n" and the N bytes after it.
func (p *imapParser) literal() (string, error) {
	end := strings.IndexByte(p.s[p.i:], '}')
	if end < 0 {
		return "", fmt.Errorf("bad literal at %d", p.i)
	}
	n, err := strconv.Atoi(strings.TrimSuffix(p.s[p.i+1:p.i+end], "+"))
	if err != nil || n < 0 {
		return "", fmt.Errorf("bad literal length at %d", p.i)
	}
	start := p.i + end + 1
	if !strings.HasPrefix(p.s[start:], "\r\n") || start+2+n > len(p.s) {
		return "", fmt.Errorf("short literal at %d", p.i)
	}
	p.i = start + 2 + n
	return p.s[start+2 : start+2+n], nil
}

// atom reads up to a space or parenthesis, keeping a bracketed section
// whole: "BODY[HEADER.FIELDS (X)]" is one atom.
func (p *imapParser) atom() string {
	start, depth := p.i, 0
	for ; p.i < len(p.s); p.i++ {
		switch p.s[p.i] {
		case '[':
			depth++
		case ']':
			depth--
		case ' ', '(', ')':
			if depth <= 0 {
				return p.s[start:p.i]
			}
		}
	}
	return p.s[start:]
}

// str returns v as a string: atoms, quoted strings and literals are
// strings, NIL is "".
func str(v any) string {
	s, _ := v.(string)
	return s
}

func abbreviate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
