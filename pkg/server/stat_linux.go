package server

import (
	"os"
	"syscall"
	"time"
)

// inodeAndCtime are fi's inode and its status change time (a chmod or
// chown sets it, not the modification time).
func inodeAndCtime(fi os.FileInfo) (uint64, time.Time) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, time.Time{}
	}
	return st.Ino, time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
}
