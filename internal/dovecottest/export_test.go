package dovecottest

import (
	"fmt"
	"os/exec"
	"strings"
)

// GroupAlive exposes groupAlive to the external tests.
var GroupAlive = groupAlive

// RefuseCommands makes every apt-get and apt-cache run (runCommand) fail
// and be recorded, until the returned function restores them; it returns
// the commands refused.
func RefuseCommands() (ran func() []string, restore func()) {
	var cmds []string
	old := runCommand
	runCommand = func(cmd *exec.Cmd) ([]byte, error) {
		cmds = append(cmds, strings.Join(cmd.Args, " "))
		return nil, fmt.Errorf("refused: %s", strings.Join(cmd.Args, " "))
	}
	return func() []string { return cmds }, func() { runCommand = old }
}
