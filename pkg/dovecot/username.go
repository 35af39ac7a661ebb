package dovecot

import (
	"errors"
	"fmt"
	"strings"
)

// UsernameFormat normalises usernames the way Dovecot's
// auth_username_format does, so every event of one mailbox names the same
// user. Dovecot reports IMAP and POP3 events with the canonical username,
// but an LMTP delivery with the recipient as it was looked up
// ("Alice@Example.org" where the user is "alice@example.org", or
// "u1@host" where auth_username_format = %n makes it "u1"). The per-user
// lock and coalescing key on the username, so both must agree.
//
// The format takes Dovecot 2.3 variables (%u, %n, %d, with L for lower
// case: %Lu, %Ln, %Ld, and %% for a percent sign) or Dovecot 2.4's
// %{user}, %{user | username}, %{user | domain}, each optionally followed
// by "| lower"; anything else is literal text.
type UsernameFormat struct {
	parts []formatPart
	raw   string
}

type formatPart struct {
	literal string
	take    byte // 'u' whole name, 'n' before '@', 'd' after '@'; 0: literal
	lower   bool
}

// DefaultUsernameFormat is Dovecot's own default auth_username_format.
const DefaultUsernameFormat = "%Lu"

// ParseUsernameFormat parses a format; errors say what is not understood.
func ParseUsernameFormat(s string) (UsernameFormat, error) {
	f := UsernameFormat{raw: s}
	for i := 0; i < len(s); {
		if s[i] != '%' {
			j := strings.IndexByte(s[i:], '%')
			if j < 0 {
				j = len(s) - i
			}
			f.parts = append(f.parts, formatPart{literal: s[i : i+j]})
			i += j
			continue
		}
		if i+1 >= len(s) {
			return f, fmt.Errorf("username format %q: lone %% at the end", s)
		}
		switch c := s[i+1]; {
		case c == '%':
			f.parts = append(f.parts, formatPart{literal: "%"})
			i += 2
		case c == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return f, fmt.Errorf("username format %q: unclosed %%{", s)
			}
			p, err := parseBraced(s[i+2 : i+end])
			if err != nil {
				return f, fmt.Errorf("username format %q: %w", s, err)
			}
			f.parts = append(f.parts, p)
			i += end + 1
		default:
			p := formatPart{}
			j := i + 1
			if c == 'L' {
				p.lower = true
				j++
			}
			if j >= len(s) || !strings.ContainsRune("und", rune(s[j])) {
				return f, fmt.Errorf("username format %q: want %%u, %%n or %%d (optionally %%Lu, %%Ln, %%Ld)", s)
			}
			p.take = s[j]
			f.parts = append(f.parts, p)
			i = j + 1
		}
	}
	if len(f.parts) == 0 {
		return f, errors.New("username format is empty")
	}
	for _, p := range f.parts {
		if p.take != 0 {
			return f, nil
		}
	}
	// Every user would get this one name: each change would replicate
	// a user of that name, and none of the real ones.
	return f, fmt.Errorf("username format %q names no part of the user (%%u, %%n, %%d or %%{user}): every change would name the same user (%%%% is a literal %%)", s)
}

func parseBraced(expr string) (formatPart, error) {
	fields := strings.Split(expr, "|")
	if strings.TrimSpace(fields[0]) != "user" {
		return formatPart{}, fmt.Errorf("%%{%s}: only the variable user is known", expr)
	}
	p := formatPart{take: 'u'}
	for _, fl := range fields[1:] {
		switch strings.TrimSpace(fl) {
		case "lower":
			p.lower = true
		case "username":
			p.take = 'n'
		case "domain":
			p.take = 'd'
		default:
			return p, fmt.Errorf("%%{%s}: filter %q: want lower, username or domain", expr, strings.TrimSpace(fl))
		}
	}
	return p, nil
}

// String returns the format as written.
func (f UsernameFormat) String() string { return f.raw }

// Apply formats user. The zero UsernameFormat returns user unchanged.
func (f UsernameFormat) Apply(user string) string {
	if len(f.parts) == 1 && f.parts[0].take == 'u' {
		// The common case, without building a string.
		if f.parts[0].lower {
			return lowerASCII(user)
		}
		return user
	}
	if len(f.parts) == 0 {
		return user
	}
	name, domain, _ := strings.Cut(user, "@")
	var b strings.Builder
	for _, p := range f.parts {
		v := p.literal
		switch p.take {
		case 'u':
			v = user
		case 'n':
			v = name
		case 'd':
			v = domain
		}
		if p.lower {
			v = lowerASCII(v)
		}
		b.WriteString(v)
	}
	return b.String()
}

// lowerASCII lower-cases A to Z only, as Dovecot's %L and lower filter do
// (str_lcase): Dovecot keeps "Ärger" as it is, and doveadm knows no user
// "ärger".
func lowerASCII(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return 'A' <= r && r <= 'Z' })
	if i < 0 {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if 'A' <= b[i] && b[i] <= 'Z' {
			b[i] += 'a' - 'A'
		}
	}
	return string(b)
}
