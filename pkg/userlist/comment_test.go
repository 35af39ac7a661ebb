package userlist

import (
	"strings"
	"testing"
)

// TestParse_CommentAfterOtherWhiteSpace: a comment after a no-break space
// (pasted from a web page or a word processor) or an ideographic space is
// a comment too; the line's ends are trimmed of the same white space.
func TestParse_CommentAfterOtherWhiteSpace(t *testing.T) {
	for _, in := range []string{
		"alice\u00a0# on leave\n",
		"alice\u3000# on leave\n",
		"alice \u00a0# on leave\n",
	} {
		got, err := Parse(strings.NewReader(in), mustFormat(t, "%Lu"))
		if err != nil || strings.Join(got, ",") != "alice" {
			t.Errorf("Parse(%q) = %q, %v; want alice", in, got, err)
		}
	}
}
