package dovecot

import "testing"

func TestUsernameFormat(t *testing.T) {
	for _, tc := range []struct{ format, in, want string }{
		{"%Lu", "Alice@Example.ORG", "alice@example.org"},
		{"%u", "Alice@Example.ORG", "Alice@Example.ORG"},
		{"%n", "u1@mail-a.test", "u1"},
		{"%Ln", "U1@mail-a.test", "u1"},
		{"%n", "u1", "u1"},
		{"%d", "u1@mail-a.test", "mail-a.test"},
		{"%Ln@%Ld", "Bob@EXAMPLE.org", "bob@example.org"},
		{"%%%n", "x@y", "%x"},
		{"%{user}", "Alice@X", "Alice@X"},
		{"%{user | lower}", "Alice@X", "alice@x"},
		{"%{user | username}", "u1@mail-a.test", "u1"},
		{"%{user|username|lower}", "U1@mail-a.test", "u1"},
		{"%{ user | domain }", "u1@mail-a.test", "mail-a.test"},
		// Dovecot lower-cases ASCII letters only.
		{"%Lu", "ÄRGER@Example.ORG", "Ärger@example.org"},
		{"%Ln", "ÉTÉ@x", "ÉtÉ"},
		{"%{user | lower}", "Ärger", "Ärger"},
		{"%Lu", "ıI", "ıi"},
	} {
		f, err := ParseUsernameFormat(tc.format)
		if err != nil {
			t.Errorf("ParseUsernameFormat(%q): %v", tc.format, err)
			continue
		}
		if got := f.Apply(tc.in); got != tc.want {
			t.Errorf("%q.Apply(%q) = %q, want %q", tc.format, tc.in, got, tc.want)
		}
	}
	var zero UsernameFormat
	if got := zero.Apply("Mixed@Case"); got != "Mixed@Case" {
		t.Errorf("zero format changed the name to %q", got)
	}
}

func TestUsernameFormat_Errors(t *testing.T) {
	// A format without a variable names every user alike: "%%Lu" is the
	// text "%Lu" (a '%' doubled as a shell or unit file may want), and
	// every change would replicate a user of that name, none of the real
	// ones.
	for _, bad := range []string{"", "%", "%x", "%L", "%Lx", "%{user", "%{home}", "%{user | upper}",
		"%%Lu", "%%u", "vmail", "%%"} {
		if _, err := ParseUsernameFormat(bad); err == nil {
			t.Errorf("ParseUsernameFormat(%q) accepted", bad)
		}
	}
}
