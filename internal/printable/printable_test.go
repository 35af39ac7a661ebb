package printable

import "testing"

func TestString(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"alice@example.org", "alice@example.org"},
		{"Jürgen 山田 😀", "Jürgen 山田 😀"},
		{"a\x1b[2Jb", `a\x1b[2Jb`},
		{"tab\there", `tab\there`},
		{"del\x7f", `del\x7f`},
		{"csi\u009b", `csi\u009b`},
		{"not utf-8 \x9b", `not utf-8 \x9b`},
		{"evil\u202egro.elpmaxe@", `evil\u202egro.elpmaxe@`},
		{"zero\u200bwidth", `zero\u200bwidth`},
		{"\ufeffbom", `\ufeffbom`},
		{"line\u2028para\u2029", `line\u2028para\u2029`},
	} {
		if got := String(c.in); got != c.want {
			t.Errorf("String(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
