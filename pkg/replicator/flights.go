package replicator

import (
	"sync"
	"time"
)

// flights are the dsyncs this instance runs now, by user. A stamped change
// of a user whose dsync runs here needs no Redis round trip:
//
//   - observed before the running attempt started: that attempt covers it;
//   - observed after: the flight notes that another attempt is needed, and
//     its owner asks for one when it records the success (Succeed's rerun),
//     as a Busy mark in Redis would have made it.
//
// Either way the change is acknowledged as merged. Only a change seen on
// the host the attempt runs from merges: one from another host goes to
// Redis, which keeps its host, so that an answer "no such user" from this
// host does not drop a change the other one saw (it may know the user).
// Nothing is lost if this
// process dies first: Begin left the user in the pending set when the
// attempt started, and only a Succeed that needs no further attempt clears
// it, so the next event or the sweep replicates the user.
//
// While its owner records an outcome or restarts an attempt, a flight is
// closed: changes then go to Redis, whose scripts order them with the
// owner's. So is a flight whose lease ended: a change merged only while
// the lock is surely held was seen before any other instance could take
// it, so the next owner's dsync, which starts later, covers it.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	lease  *lease    // the lock the attempt runs under
	host   string    // the host the attempt runs from
	start  time.Time // the running attempt's start (Redis clock)
	open   bool      // changes may merge in-process
	rerun  bool      // a merged change needs another attempt
	merged int       // changes merged in-process into this attempt or the next
}

func newFlights() *flights { return &flights{m: make(map[string]*flight)} }

// begin registers the flight of user whose attempt from host started at
// start, under the lock that l holds.
func (fs *flights) begin(user, host string, start time.Time, l *lease) *flight {
	f := &flight{lease: l, host: host, start: start, open: true}
	fs.mu.Lock()
	fs.m[user] = f
	fs.mu.Unlock()
	return f
}

// merge acknowledges a change of user seen on host at observed into the
// flight running here from that host, if there is an open one.
func (fs *flights) merge(user, host string, observed time.Time) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.m[user]
	if f == nil || !f.open || f.host != host || !f.lease.held() {
		return false
	}
	if !observed.Before(f.start) {
		f.rerun = true
	}
	f.merged++
	return true
}

// close stops merging into f and returns whether a merged change asked for
// another attempt and how many changes merged since the last call.
func (fs *flights) close(f *flight) (rerun bool, merged int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.open = false
	rerun, merged = f.rerun, f.merged
	f.merged = 0
	return rerun, merged
}

// reopen lets changes merge into the attempt that started at start. Every
// change merged before was observed before it, so no rerun is owed.
func (fs *flights) reopen(f *flight, start time.Time) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.start, f.rerun, f.open = start, false, true
}

// end forgets f.
func (fs *flights) end(user string, f *flight) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[user] == f {
		delete(fs.m, user)
	}
}
