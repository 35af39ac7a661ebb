package dovecottest

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Halt stops Dovecot like Stop (SIGTERM, then SIGKILL to the process
// group) but keeps the instance folder with its config, users, mail and
// state, so that Restart brings the same server back: a server that is
// down for a while. Halting a halted instance does nothing. Halt and
// Restart are not safe for concurrent use with each other or with Stop.
func (in *Instance) Halt() error {
	if in.stopped {
		return errors.New("dovecottest: Halt after Stop")
	}
	if in.cmd == nil {
		return nil
	}
	err := in.stop()
	// The master is gone: forget it, so that neither a second Halt nor
	// Stop signals a PID the kernel may have given to another process.
	in.cmd, in.PID = nil, 0
	return err
}

// Restart halts the instance if it runs and starts Dovecot again with the
// same folder, config and ports, then waits until IMAP accepts. The log
// keeps what the earlier runs wrote. It fails after Stop, which may have
// removed the folder.
func (in *Instance) Restart(ctx context.Context) error {
	if in.stopped {
		return errors.New("dovecottest: Restart after Stop")
	}
	if err := in.Halt(); err != nil {
		return err
	}
	if in.root != "" {
		if err := in.makeMountPoint(); err != nil {
			return err
		}
	}
	if err := in.launch(os.O_APPEND); err != nil {
		in.removeMountPoint()
		return err
	}
	if err := in.waitReady(ctx); err != nil {
		herr := in.Halt()
		return errors.Join(fmt.Errorf("dovecottest: restart %s: %w\n--- log ---\n%s", in.Name, err, in.Log()), herr)
	}
	return nil
}
