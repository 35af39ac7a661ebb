package userlist

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

func mustFormat(t testing.TB, s string) dovecot.UsernameFormat {
	t.Helper()
	f, err := dovecot.ParseUsernameFormat(s)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, format, in string
		want             []string
		err              string
	}{
		{name: "empty", format: "%Lu", in: "", want: nil},
		{name: "comments and blanks", format: "%Lu", in: "# archive accounts\n\n  \t\narchive@example.org\n",
			want: []string{"archive@example.org"}},
		{name: "normalised, sorted, once", format: "%Lu",
			in:   "Bob@Example.org\r\n  alice@example.org  \nbob@example.org\n",
			want: []string{"alice@example.org", "bob@example.org"}},
		{name: "no final newline", format: "%Lu", in: "a\nb", want: []string{"a", "b"}},
		{name: "username part, as %n", format: "%Ln", in: "Carol@example.org\n", want: []string{"carol"}},
		{name: "space inside a name is kept", format: "%u", in: "first last\n", want: []string{"first last"}},
		{name: "an option", format: "%Lu", in: "ok\n-f\n", err: `line 2: username "-f" starts with '-'`},
		{name: "a mask", format: "%Lu", in: "# all\n*@example.org\n", err: "line 2: username \"*@example.org\" has a wildcard"},
		{name: "a control character", format: "%Lu", in: "a\x00b\n", err: "line 1: username \"a\\x00b\" has a control character"},
		{name: "not UTF-8", format: "%Lu", in: "\xff\n", err: "line 1: username is not valid UTF-8"},
		{name: "too long for a username", format: "%Lu", in: strings.Repeat("a", doveadm.MaxUserLen+1), err: "line 1: username of 256 bytes exceeds 255"},
		{name: "too long for a line", format: "%Lu", in: "a\n" + strings.Repeat("a", maxLine+1), err: "line 2: longer than 4096 bytes"},
		{name: "a comment marker inside a name is part of it", format: "%Lu", in: "a#b\n", want: []string{"a#b"}},
		{name: "a comment without a blank before it", format: "%Lu", in: "ok\nalice# on leave\n", err: `line 2: "alice# on leave": a comment starts with '#' after a blank`},
		{name: "a comment after a name", format: "%Lu", in: "alice # on leave\nbob\t#archive\n  # indented\nc#d # x\n", want: []string{"alice", "bob", "c#d"}},
		// A no-break space (pasted from a web page) or an ideographic
		// space before '#' starts a comment too: the line's ends are
		// trimmed of the same white space.
		{name: "a comment after a no-break space", format: "%Lu", in: "alice\u00a0# on leave\n", want: []string{"alice"}},
		{name: "a comment after an ideographic space", format: "%Lu", in: "alice\u3000# on leave\n", want: []string{"alice"}},
		{name: "a comment after mixed white space", format: "%Lu", in: "alice \u00a0# on leave\n", want: []string{"alice"}},
		// Saved as "UTF-8 with BOM" (older Notepad, PowerShell 5's
		// Out-File): the mark is no part of the first name.
		{name: "a byte-order mark", format: "%Lu", in: "\ufeffalice\nbob\n", want: []string{"alice", "bob"}},
		{name: "a byte-order mark before a comment", format: "%Lu", in: "\ufeff# excluded\nalice\n", want: []string{"alice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tc.in), mustFormat(t, tc.format))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || got != nil {
					t.Fatalf("Parse = %q, %v; want no users and an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("Parse = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestParse_TooMany: a list longer than MaxUsers is refused, naming the
// line, instead of being read whole; MaxUsers names are fine.
func TestParse_TooMany(t *testing.T) {
	var b strings.Builder
	for i := range MaxUsers {
		fmt.Fprintf(&b, "u%d\n", i)
	}
	users, err := Parse(strings.NewReader(b.String()), mustFormat(t, "%Lu"))
	if err != nil || len(users) != MaxUsers {
		t.Fatalf("%d names: %d users, %v", MaxUsers, len(users), err)
	}
	b.WriteString("# a comment is no user\none-more\n")
	want := fmt.Sprintf("line %d: more than %d users", MaxUsers+2, MaxUsers)
	if users, err := Parse(strings.NewReader(b.String()), mustFormat(t, "%Lu")); err == nil || err.Error() != want || users != nil {
		t.Errorf("%d names: %d users, %v; want %q", MaxUsers+1, len(users), err, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "excluded")
	if err := os.WriteFile(path, []byte("Alice@Example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path, mustFormat(t, "%Lu"))
	if err != nil || !slices.Equal(got, []string{"alice@example.org"}) {
		t.Fatalf("Load = %q, %v", got, err)
	}
	if err := os.WriteFile(path, []byte("ok\n-x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, mustFormat(t, "%Lu")); err == nil || !strings.HasPrefix(err.Error(), path+": line 2:") {
		t.Errorf("error %v does not name the file and line", err)
	}
	if _, err := Load(filepath.Join(dir, "missing"), mustFormat(t, "%Lu")); !os.IsNotExist(err) {
		t.Errorf("a missing file: %v", err)
	}
}

// TestLoad_TooLarge: a file over MaxFile bytes (the wrong file named: a
// log, a device that never ends) is refused, naming the file, after
// reading no more of it than that, even when what was read would parse;
// a file of exactly the bound loads. The bound is lowered here so that
// the test does not write 256 MiB.
func TestLoad_TooLarge(t *testing.T) {
	if MaxFile < MaxUsers*(doveadm.MaxUserLen+1) {
		t.Errorf("MaxFile %d does not hold %d users of the longest name", MaxFile, MaxUsers)
	}
	defer func(old int64) { maxFile = old }(maxFile)
	maxFile = 1024
	path := filepath.Join(t.TempDir(), "excluded")
	fits := "alice\n" + strings.Repeat("# comment\n", (1024-len("alice\n"))/len("# comment\n"))
	fits += strings.Repeat("\n", 1024-len(fits))
	if err := os.WriteFile(path, []byte(fits), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := Load(path, mustFormat(t, "%Lu")); err != nil || !slices.Equal(got, []string{"alice"}) {
		t.Fatalf("a file of 1024 bytes: %q, %v; want it loaded", got, err)
	}
	if err := os.WriteFile(path, []byte(fits+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := path + ": larger than 1024 bytes, too large for a list of users"
	if got, err := Load(path, mustFormat(t, "%Lu")); err == nil || !strings.HasPrefix(err.Error(), want) || got != nil {
		t.Errorf("a file of 1025 bytes: %q, %v; want an error %q", got, err, want)
	}
}

// FuzzParse: whatever the file holds, Parse never panics, and every name
// it returns is a valid, normalised username, sorted and unique.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "alice@example.org\n", "# c\n\nBob\r\n bob \n", "-x\n", "*\n", "a\x00b", "\xff\xfe\n", strings.Repeat("a", 300)} {
		f.Add(s)
	}
	format := mustFormat(f, "%Lu")
	f.Fuzz(func(t *testing.T, in string) {
		users, err := Parse(strings.NewReader(in), format)
		if err != nil {
			if users != nil {
				t.Fatalf("users %q with error %v", users, err)
			}
			return
		}
		for i, u := range users {
			if err := doveadm.ValidateUser(u); err != nil {
				t.Fatalf("returned %q: %v", u, err)
			}
			if format.Apply(u) != u {
				t.Fatalf("returned %q, not normalised", u)
			}
			if i > 0 && users[i-1] >= u {
				t.Fatalf("not sorted and unique: %q", users)
			}
		}
	})
}
