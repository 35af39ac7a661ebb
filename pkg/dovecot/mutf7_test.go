package dovecot

import (
	"encoding/base64"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// encodeMUTF7 is RFC 3501's encoder, the oracle of FuzzDecodeMUTF7:
// printable ASCII but '&' as itself, '&' as "&-", every run of other
// characters as UTF-16 in modified base64 between '&' and '-'.
func encodeMUTF7(s string) string {
	var b strings.Builder
	var run []rune
	flush := func() {
		if len(run) == 0 {
			return
		}
		var raw []byte
		for _, u := range utf16.Encode(run) {
			raw = append(raw, byte(u>>8), byte(u))
		}
		b.WriteByte('&')
		b.WriteString(strings.ReplaceAll(base64.RawStdEncoding.EncodeToString(raw), "/", ","))
		b.WriteByte('-')
		run = run[:0]
	}
	for _, r := range s {
		switch {
		case r == '&':
			flush()
			b.WriteString("&-")
		case r >= 0x20 && r <= 0x7e:
			flush()
			b.WriteRune(r)
		default:
			run = append(run, r)
		}
	}
	flush()
	return b.String()
}

// FuzzDecodeMUTF7: a mailbox name comes from a client's command, through
// Dovecot's event. Any name decodes without a panic; what decodes from
// valid UTF-8 is valid UTF-8; and a name encoded as RFC 3501 says decodes
// to itself.
func FuzzDecodeMUTF7(f *testing.F) {
	for _, s := range []string{"Archive", "&-", "Entw&APw-rfe", "&ZeVnLIqe-", "~peter/mail/&U,BTFw-/&ZeVnLIqe-",
		"&", "&Zm9v", "&!!-", "&AA-", "&2D3eAA-", "&2D0-", "&3gDYPQ-", "Entwürfe", "a&b", "\x00\xff", "\ufffd", "&,,0-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := DecodeMUTF7(s)
		if err == nil && utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("DecodeMUTF7(%q) = %q: not UTF-8", s, got)
		}
		if !utf8.ValidString(s) {
			return // the encoder's input is a name, in UTF-8
		}
		enc := encodeMUTF7(s)
		back, err := DecodeMUTF7(enc)
		if err != nil || back != s {
			t.Fatalf("DecodeMUTF7(%q) (the encoding of %q) = %q, %v", enc, s, back, err)
		}
	})
}
