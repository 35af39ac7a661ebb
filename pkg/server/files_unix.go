//go:build unix

package server

import (
	"log/slog"
	"syscall"
)

// filesBeside is what a role needs of file descriptors beside its
// listener's connections: its own connections to Redis, the Broker and
// doveadm, and its files.
const filesBeside = 256

// warnFewFiles warns when the process may open fewer files than
// maxConns connections and what it needs beside them: past its limit
// accepting fails, and every client waits, not only the newest. (Go raises
// the soft limit to the hard one at start; systemd's LimitNOFILE= and a
// container's ulimit set the hard one.)
func warnFewFiles(log *slog.Logger, maxConns int) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if need := uint64(maxConns) + filesBeside; rl.Cur < need {
		log.Warn("the process may open fewer files than max-connections needs; lower max-connections or raise the limit (systemd: LimitNOFILE=)",
			"open_files_limit", rl.Cur, "max_connections", maxConns, "needs", need, "setting", "max-connections")
	}
}
