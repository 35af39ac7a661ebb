package ingest

import (
	"fmt"
	"testing"
)

// TestTwoNames_ReportsTheFirstPairOnce: a local part seen bare and with a
// domain is reported once, with the other name; the same name again, or
// two domains of one local part, are no pair.
func TestTwoNames_ReportsTheFirstPairOnce(t *testing.T) {
	var n twoNames
	for _, u := range []string{"u1", "u1", "u2@example.org", "u2@example.net"} {
		if other, found := n.observe(u); found {
			t.Fatalf("%s reported with %s", u, other)
		}
	}
	if other, found := n.observe("u1@example.org"); !found || other != "u1" {
		t.Fatalf("u1@example.org after u1: %q %v, want u1", other, found)
	}
	if _, found := n.observe("u2"); found {
		t.Error("a second pair reported")
	}
}

// TestTwoNames_StopsWhenFull: once namesSeenMax names showed no pair, it
// stops looking (no lock per event from then on), and forgets them.
func TestTwoNames_StopsWhenFull(t *testing.T) {
	var n twoNames
	for i := range namesSeenMax {
		n.observe(fmt.Sprintf("user%d", i))
	}
	if n.done.Load() {
		t.Fatal("stopped before the table was full")
	}
	n.observe("one-more")
	if !n.done.Load() || n.seen != nil {
		t.Fatalf("done %v with %d names kept, want stopped and nothing kept", n.done.Load(), len(n.seen))
	}
	if _, found := n.observe("user1@example.org"); found {
		t.Error("a pair reported after it stopped")
	}
}
