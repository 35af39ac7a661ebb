package doveadm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
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
