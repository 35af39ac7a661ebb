package dovecot

import (
	"encoding/base64"
	"errors"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// mutf7 is IMAP's modified base64: ',' instead of '/', no padding.
var mutf7 = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)

// DecodeMUTF7 decodes a mailbox name from IMAP's modified UTF-7 (RFC 3501
// 5.1.3), as it appears in command arguments.
func DecodeMUTF7(s string) (string, error) {
	if !strings.Contains(s, "&") {
		return s, nil
	}
	var b strings.Builder
	for len(s) > 0 {
		i := strings.IndexByte(s, '&')
		if i < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:i])
		s = s[i+1:]
		j := strings.IndexByte(s, '-')
		if j < 0 {
			return "", errors.New("modified UTF-7: unterminated shift")
		}
		if j == 0 {
			b.WriteByte('&')
			s = s[1:]
			continue
		}
		raw, err := mutf7.DecodeString(s[:j])
		if err != nil || len(raw)%2 != 0 {
			return "", errors.New("modified UTF-7: bad base64 run")
		}
		u := make([]uint16, len(raw)/2)
		for k := range u {
			u[k] = uint16(raw[2*k])<<8 | uint16(raw[2*k+1])
		}
		for k := 0; k < len(u); k++ {
			r := rune(u[k])
			if utf16.IsSurrogate(r) {
				// Only a high surrogate followed by a low one is a
				// character; utf16.Decode would turn any other into
				// U+FFFD, which is a character of its own too.
				if k+1 == len(u) {
					return "", errors.New("modified UTF-7: invalid UTF-16")
				}
				if r = utf16.DecodeRune(r, rune(u[k+1])); r == utf8.RuneError {
					return "", errors.New("modified UTF-7: invalid UTF-16")
				}
				k++
			}
			b.WriteRune(r)
		}
		s = s[j+1:]
	}
	return b.String(), nil
}
