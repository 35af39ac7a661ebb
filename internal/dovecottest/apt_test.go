package dovecottest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/debian"
)

// TestParseCandidate reads the upstream version of apt's candidate from
// `apt-cache policy` as Debian 12 and 13 print it.
func TestParseCandidate(t *testing.T) {
	for _, c := range []struct{ policy, want string }{
		{"dovecot-core:\n  Installed: (none)\n  Candidate: 1:2.3.19.1+dfsg1-2.1+deb12u7\n  Version table:\n", "2.3.19.1"},
		{"dovecot-core:\n  Installed: (none)\n  Candidate: 1:2.4.1+dfsg1-6\n", "2.4.1"},
		{"dovecot-core:\n  Installed: (none)\n  Candidate: 2.4.0-1~bpo12+1\n", "2.4.0"},
		{"dovecot-core:\n  Installed: (none)\n  Candidate: (none)\n", ""},
		{"", ""},
	} {
		if got := parseCandidate(c.policy); got != c.want {
			t.Errorf("parseCandidate(%q) = %q, want %q", c.policy, got, c.want)
		}
	}
	if !isVersion("2.3.19.1", V23) || isVersion("2.4.1", V23) || isVersion("2.30.1", V23) {
		t.Error("isVersion does not tell 2.3.x from 2.4.x and 2.30.x")
	}
}

// fakeApt stands in for apt-get and apt-cache (runCommand) and for the
// host's `dovecot --version` (hostVersion) for the test, recording the
// commands run.
func fakeApt(t *testing.T, installed, policy string, run func(args []string) ([]byte, error)) *[]string {
	t.Helper()
	var ran []string
	oldRun, oldVersion := runCommand, hostVersion
	t.Cleanup(func() { runCommand, hostVersion = oldRun, oldVersion })
	hostVersion = func() string { return installed }
	runCommand = func(cmd *exec.Cmd) ([]byte, error) {
		ran = append(ran, strings.Join(cmd.Args, " "))
		if cmd.Args[0] == "apt-cache" {
			return []byte(policy), nil
		}
		if run != nil {
			return run(cmd.Args)
		}
		return nil, nil
	}
	return &ran
}

// TestEnsure23_OtherVersion: where Debian ships Dovecot 2.4 (Debian 13),
// or a Dovecot 2.4 is installed, Dovecot 2.3 is a *VersionError and
// nothing is installed.
func TestEnsure23_OtherVersion(t *testing.T) {
	for _, c := range []struct {
		installed, policy string
		want              VersionError
	}{
		{"", "dovecot-core:\n  Installed: (none)\n  Candidate: 1:2.4.1+dfsg1-6\n", VersionError{Want: V23, Have: "2.4.1"}},
		{"2.4.1", "", VersionError{Want: V23, Have: "2.4.1", Installed: true}},
	} {
		ran := fakeApt(t, c.installed, c.policy, nil)
		err := ensure23()
		var ve *VersionError
		if !errors.As(err, &ve) || *ve != c.want {
			t.Errorf("ensure23 with Dovecot %q installed and apt's candidate in %q: %v, want %+v", c.installed, c.policy, err, c.want)
		}
		for _, r := range *ran {
			if strings.HasPrefix(r, "apt-get") {
				t.Errorf("ensure23 ran %q", r)
			}
		}
		if u := Unavailable(V23); u == nil || u.Error() != err.Error() {
			t.Errorf("Unavailable(2.3) = %v, want %v", u, err)
		}
		if m := Missing(V23); len(m) == 0 || !strings.Contains(m[0], "2.4.1") {
			t.Errorf("Missing(2.3) = %q, want the other version named", m)
		}
	}
}

// TestAptInstall_NoServiceStarts: during apt-get install a policy-rc.d
// that forbids every service action (exit status 101) is in place, and
// it is gone afterwards, also when the install fails. Nothing is
// installed: apt-get is a stand-in. internal/debian's tests cover a
// leftover policy-rc.d and the machine's own.
func TestAptInstall_NoServiceStarts(t *testing.T) {
	old := debian.PolicyRC
	t.Cleanup(func() { debian.PolicyRC = old })
	debian.PolicyRC = filepath.Join(t.TempDir(), "policy-rc.d")
	var during []string
	check := func(args []string) {
		if args[0] != "apt-get" || args[1] != "install" {
			return
		}
		fi, err := os.Stat(debian.PolicyRC)
		if err != nil {
			during = append(during, "no policy-rc.d")
			return
		}
		out, err := exec.Command(debian.PolicyRC, "dovecot", "start").CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 101 || fi.Mode().Perm() != 0o755 {
			during = append(during, fmt.Sprintf("policy-rc.d %v answers %v %s", fi.Mode(), err, out))
		}
	}
	for _, fail := range []bool{false, true} {
		during = nil
		ran := fakeApt(t, "", "", func(args []string) ([]byte, error) {
			check(args)
			if fail {
				return []byte("E: Unable to locate package"), errors.New("exit status 100")
			}
			return nil, nil
		})
		err := aptInstall("dovecot-core")
		if fail != (err != nil) {
			t.Errorf("aptInstall with apt-get failing %v: %v", fail, err)
		}
		if len(*ran) == 0 {
			t.Fatal("aptInstall ran nothing")
		}
		if len(during) > 0 {
			t.Errorf("during apt-get install: %q", during)
		}
		if _, err := os.Stat(debian.PolicyRC); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("policy-rc.d left after aptInstall (apt-get failing %v): %v", fail, err)
		}
	}
}
