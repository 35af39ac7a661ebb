//go:build unix

package broker

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// LockSpool takes the lock of the spool file at path for this process: an
// exclusive flock on path.lock, made beside it (0600) and left there. The
// lock is held from before RestoreSpool until after SaveSpool; unlock
// gives it up (the kernel does at the process's end too). A second
// process given the same file, while another runs on it, would write it
// over at its stop with its own events, or remove it holding none: the
// first's saved events would be lost. So it is refused (ErrSpoolInUse).
func LockSpool(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s is locked)", ErrSpoolInUse, f.Name())
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}
