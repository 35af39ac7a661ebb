package replicator

import (
	"sync"
	"time"
)

// lostBegins remembers the token of each Begin that got no answer, by the
// request it was for. A Redis that hangs (paused, or cut off by a
// partition that drops packets) keeps the call on its connection and runs
// it when it resumes, after the client gave up: the lock is then taken,
// with that token, for an attempt nobody runs, and every change of the
// user merged into it would wait for the lock to expire and the sweep.
// The Broker delivers the request again after the error answer; that
// delivery's Begin sends the same token, and so finds the lock it took
// (Begin answers its own token's claim again) and runs the attempt.
//
// Only Begin's token is taken up again: Begin is the first call of an
// attempt, so a late run of it is the only call of that token still to
// come, and it only answers the claim again. Later calls of an attempt
// (Succeed, Restart) change the lock, and their tokens are never reused.
type lostBegins struct {
	mu sync.Mutex
	m  map[lostBeginKey]lostBeginToken
}

// lostBeginKey is what a redelivery of the same request has the same.
type lostBeginKey struct {
	user, host, destination string
	at                      int64
	full                    bool
}

type lostBeginToken struct {
	token string
	since time.Time
}

const (
	// lostBeginsMax bounds the tokens kept (about 150 bytes each).
	lostBeginsMax = 10_000
	// lostBeginAge is how long a token waits for its redelivery: past
	// the Broker's retries of a change (about 68 minutes).
	lostBeginAge = 2 * time.Hour
)

// take returns, and forgets, the token of a Begin of k that got no
// answer, unless it is older than lostBeginAge.
func (u *lostBegins) take(k lostBeginKey) (string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.m[k]
	if ok {
		delete(u.m, k)
	}
	if ok && time.Since(t.since) > lostBeginAge {
		// Past the Broker's retries: not a redelivery of that call.
		return "", false
	}
	return t.token, ok
}

// put remembers token as k's lostBegins Begin, while there is room.
func (u *lostBegins) put(k lostBeginKey, token string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[lostBeginKey]lostBeginToken{}
	}
	now := time.Now()
	if len(u.m) >= lostBeginsMax {
		for key, t := range u.m {
			if now.Sub(t.since) > lostBeginAge {
				delete(u.m, key)
			}
		}
		if len(u.m) >= lostBeginsMax {
			return
		}
	}
	u.m[k] = lostBeginToken{token: token, since: now}
}
