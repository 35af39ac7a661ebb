package ingest

import (
	"strings"
	"sync"
	"sync/atomic"
)

// namesSeenMax bounds the names twoNames remembers (about 100 bytes
// each): it looks at the first users only, which is where a mismatch
// shows, and stops when a new one would not fit.
const namesSeenMax = 10_000

// twoNames finds one mailbox named two ways by the changes: bare (u1)
// and with a domain (u1@example.org). That is --username-format not
// matching Dovecot's auth_username_format: Dovecot 2.3's LMTP events
// name the recipient as addressed (u1@example.org), its IMAP events the
// user as logged in (u1), and with the default %Lu both are kept apart,
// each with its own lock, coalescing and record, so two dsyncs of one
// mailbox can run at once. It reports the first such pair, once.
type twoNames struct {
	done atomic.Bool
	mu   sync.Mutex
	// seen maps a local part to the first name seen with it: bare, or
	// with its domain.
	seen map[string]string
}

// observe records user and returns the other name of the same local
// part, when user is the first to show two: one bare, one with a domain.
func (n *twoNames) observe(user string) (other string, found bool) {
	if n.done.Load() {
		return "", false
	}
	local, _, qualified := strings.Cut(user, "@")
	if local == "" {
		return "", false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.seen == nil {
		n.seen = map[string]string{}
	}
	prev, ok := n.seen[local]
	switch {
	case !ok && len(n.seen) >= namesSeenMax:
		// The first users showed no pair: stop looking, so that the
		// events no longer take this lock.
		n.done.Store(true)
		n.seen = nil
		return "", false
	case !ok:
		n.seen[local] = user
		return "", false
	case prev == user || strings.Contains(prev, "@") == qualified:
		return "", false
	}
	if n.done.Swap(true) {
		return "", false
	}
	n.seen = nil
	return prev, true
}
