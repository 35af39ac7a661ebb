package replicator

import (
	"testing"
	"time"
)

// TestLostBegins_TakenOnceAndNotWhenOld: a lost Begin's token goes to one
// redelivery of its request only, and not past the Broker's retries.
func TestLostBegins_TakenOnceAndNotWhenOld(t *testing.T) {
	var l lostBegins
	k := lostBeginKey{user: "u1", host: "mail-a", destination: "tcp:b:1", at: 1}
	l.put(k, "tok")
	if tok, ok := l.take(lostBeginKey{user: "u2", host: "mail-a", destination: "tcp:b:1", at: 1}); ok {
		t.Errorf("another user's request took %q", tok)
	}
	if tok, ok := l.take(k); !ok || tok != "tok" {
		t.Errorf("the redelivery: %q %v, want the lost Begin's token", tok, ok)
	}
	if tok, ok := l.take(k); ok {
		t.Errorf("a second delivery took %q as well", tok)
	}
	l.put(k, "old")
	l.m[k] = lostBeginToken{token: "old", since: time.Now().Add(-lostBeginAge - time.Minute)}
	if tok, ok := l.take(k); ok {
		t.Errorf("a token older than %v was taken: %q", lostBeginAge, tok)
	}
}
