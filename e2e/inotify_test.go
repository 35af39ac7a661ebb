package e2e

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// watchMaildirs reports, per user, the time each new file lands in the
// user's Maildir on B (new/ or cur/, where Dovecot renames a message from
// tmp/ when it commits it). The watch ends with the test.
func (s *system) watchMaildirs(t testing.TB, users []string) map[string]chan time.Time {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	// Non-blocking and wrapped in an *os.File, so that Go's poller waits
	// for it and Close ends the reader.
	f := os.NewFile(uintptr(fd), "inotify")
	t.Cleanup(func() { f.Close() })
	byWatch := map[int32]chan time.Time{}
	out := map[string]chan time.Time{}
	for _, u := range users {
		ch := make(chan time.Time, 1024)
		out[u] = ch
		for _, sub := range []string{"new", "cur"} {
			dir := filepath.Join(s.b.Dir, "mail", u, "Maildir", sub)
			wd, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_MOVED_TO|syscall.IN_CREATE)
			if err != nil {
				t.Fatalf("inotify watch %s: %v", dir, err)
			}
			byWatch[int32(wd)] = ch
		}
	}
	go func() {
		buf := make([]byte, 64*1024)
		for {
			n, err := f.Read(buf)
			if err != nil || n <= 0 {
				return // closed at cleanup
			}
			now := time.Now()
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				if ch, ok := byWatch[ev.Wd]; ok && ev.Mask&syscall.IN_ISDIR == 0 {
					select {
					case ch <- now:
					default:
					}
				}
				off += syscall.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}()
	return out
}
