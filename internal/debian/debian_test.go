package debian

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// usePolicyRC points PolicyRC at a file of the test's own and stands in
// for apt-get with run, recording what policy-rc.d answered during each
// apt-get install.
func usePolicyRC(t *testing.T, run func(args []string) ([]byte, error)) *[]string {
	t.Helper()
	oldPolicy, oldRun := PolicyRC, runCommand
	t.Cleanup(func() { PolicyRC, runCommand = oldPolicy, oldRun })
	PolicyRC = filepath.Join(t.TempDir(), "policy-rc.d")
	var during []string
	runCommand = func(cmd *exec.Cmd) ([]byte, error) {
		if len(cmd.Args) > 3 && cmd.Args[3] == "install" {
			fi, err := os.Stat(PolicyRC)
			if err != nil {
				during = append(during, "no policy-rc.d")
			} else {
				out, err := exec.Command(PolicyRC, "redis-server", "start").CombinedOutput()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 101 || fi.Mode().Perm() != 0o755 {
					during = append(during, fmt.Sprintf("policy-rc.d %v answers %v %s", fi.Mode(), err, out))
				}
			}
		}
		return run(cmd.Args)
	}
	return &during
}

// TestEnsure_NoServiceStarts: the packages Ensure installs (redis-server,
// prometheus) start no service of the machine's: a policy-rc.d that
// forbids every action is in place during apt-get install and gone after.
// Nothing is installed: apt-get is a stand-in, so the program is still
// missing afterwards.
func TestEnsure_NoServiceStarts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("Ensure installs only as root; this test runs as root in CI")
	}
	var ran []string
	during := usePolicyRC(t, func(args []string) ([]byte, error) {
		ran = append(ran, strings.Join(args, " "))
		return nil, nil
	})
	_, err := Ensure("dovewarden-test-no-such-program", "no-such-package")
	if err == nil || !strings.Contains(err.Error(), "installed but not found") {
		t.Errorf("Ensure of a program apt-get does not bring: %v", err)
	}
	if len(ran) == 0 || len(*during) > 0 {
		t.Errorf("apt-get ran %q; policy-rc.d during install: %q", ran, *during)
	}
	if _, err := os.Stat(PolicyRC); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("policy-rc.d left after the install: %v", err)
	}
}

// TestNoServiceStarts_LeftoversAndTheMachinesOwn: a policy-rc.d that an
// install killed midway left (this version's or dovecottest's earlier
// one) is replaced, and removed after; the machine's own stays as it is.
func TestNoServiceStarts_LeftoversAndTheMachinesOwn(t *testing.T) {
	during := usePolicyRC(t, func([]string) ([]byte, error) { return nil, nil })
	for _, left := range []string{
		policyRCText,
		"#!/bin/sh\n# Written by dovewarden's internal/dovecottest for the time of its apt-get install,\nexit 101\n",
	} {
		if err := os.WriteFile(PolicyRC, []byte(left), 0o755); err != nil {
			t.Fatal(err)
		}
		allow, err := NoServiceStarts()
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(PolicyRC); string(b) != policyRCText {
			t.Errorf("over the leftover %q: %q", left, b)
		}
		allow()
		if _, err := os.Stat(PolicyRC); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a leftover policy-rc.d is still there: %v", err)
		}
	}

	own := "#!/bin/sh\nexit 0\n"
	if err := os.WriteFile(PolicyRC, []byte(own), 0o755); err != nil {
		t.Fatal(err)
	}
	allow, err := NoServiceStarts()
	if err != nil {
		t.Fatal(err)
	}
	allow()
	if b, err := os.ReadFile(PolicyRC); err != nil || string(b) != own {
		t.Errorf("the machine's own policy-rc.d: %q, %v", b, err)
	}
	if len(*during) > 0 {
		t.Errorf("%q", *during)
	}
}
