package doveadm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestParseExcludeMailboxes(t *testing.T) {
	for in, want := range map[string][]string{
		"":                             nil,
		"  ":                           nil,
		"Junk":                         {"Junk"},
		" Junk , Archive/* ,Entwürfe ": {"Junk", "Archive/*", "Entwürfe"},
		"Junk,Junk":                    {"Junk"},
		"a?b, Spam ?":                  {"a?b", "Spam ?"},
		"-x":                           {"-x"},            // an argument of -x, never an option (Args)
		"%, ?, *?a":                    {"%", "?", "*?a"}, // % is no wildcard of dsync's
		many(100):                      strings.Split(many(100), ","),
	} {
		got, err := ParseExcludeMailboxes(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseExcludeMailboxes(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"Junk,,Trash":             "an empty mailbox between commas",
		"Junk,":                   "an empty mailbox between commas",
		"\\Junk":                  "special-use",
		"Trash, \\Trash":          "special-use",
		"*":                       "leaves every mailbox out",
		"Junk, **":                "leaves every mailbox out",
		"?*":                      "leaves every mailbox out",
		"Junk\nTrash":             "control character",
		"Junk\x00":                "control character",
		"Entw\xfcrfe":             "not UTF-8",
		strings.Repeat("a", 1025): "longer than 1024 bytes",
		many(101):                 "101 mailboxes: want at most 100",
	} {
		if got, err := ParseExcludeMailboxes(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseExcludeMailboxes(%.40q) = %q, %v; want an error with %q", in, got, err, want)
		}
	}
}

// many is a list of n different names.
func many(n int) string {
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("m%d", i))
	}
	return strings.Join(names, ",")
}

// TestArgs_ExcludeMailboxes: each is an -x with its own argument, before
// the destination, so no name is read as an option.
func TestArgs_ExcludeMailboxes(t *testing.T) {
	got := Args(Endpoint{}, SyncRequest{User: "u1", Destination: "tcp:r:1", ExcludeMailboxes: []string{"Junk", "-f", "Entwürfe"}})
	want := []string{"sync", "-u", "u1", "-N", "-s", "", "-x", "Junk", "-x", "-f", "-x", "Entwürfe", "tcp:r:1"}
	if !slices.Equal(got, want) {
		t.Errorf("Args = %q, want %q", got, want)
	}
}

// FuzzParseExcludeMailboxes: whatever the setting holds, the list taken
// is one dsync can be given: each entry non-empty, trimmed, UTF-8 without
// control characters, within the bounds, no special-use flag, no mask of
// wildcards alone, none twice; and every entry comes from the setting.
func FuzzParseExcludeMailboxes(f *testing.F) {
	for _, s := range []string{"", "Junk", " Junk , Lists/* ,Entwürfe ", "Junk,Junk", "a?b", "\\Junk", "*", "?*", "Junk,,", "Junk\n", "\xff", many(100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseExcludeMailboxes(s)
		if err != nil {
			if got != nil {
				t.Fatalf("an error (%v) and a list %q", err, got)
			}
			return
		}
		if len(got) > maxExcludeMailboxes {
			t.Fatalf("%d entries", len(got))
		}
		parts := map[string]bool{}
		for _, p := range strings.Split(s, ",") {
			parts[strings.TrimSpace(p)] = true
		}
		seen := map[string]bool{}
		for _, m := range got {
			switch {
			case m == "" || m != strings.TrimSpace(m) || !utf8.ValidString(m) || strings.ContainsFunc(m, unicode.IsControl) || len(m) > maxExcludeLen:
				t.Fatalf("entry %q taken", m)
			case strings.HasPrefix(m, `\`) || (strings.Trim(m, "*?") == "" && strings.Contains(m, "*")):
				t.Fatalf("entry %q taken", m)
			case seen[m] || !parts[m]:
				t.Fatalf("entry %q twice, or not in %q", m, s)
			}
			seen[m] = true
		}
	})
}
