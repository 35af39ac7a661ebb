package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binEnv names a prebuilt dovewarden binary to test instead of building
// one from this tree (a release build, say).
const binEnv = "DOVEWARDEN_E2E_BIN"

// dovewardenBin is the binary every test runs, built once by TestMain.
var dovewardenBin string

// skipReason is set when the suite cannot run on this machine.
var skipReason string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		// CI runs as root; a developer without root still gets the rest of
		// `go test ./...`.
		skipReason = "the e2e suite installs Dovecot and redis-server when missing and runs Dovecot in " +
			"namespaces (unshare, chroot), which needs root; run it as root (CI does)"
		return m.Run()
	}
	if bin := os.Getenv(binEnv); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		dovewardenBin = abs
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "dovewarden-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	dovewardenBin = filepath.Join(dir, "dovewarden")
	build := exec.Command("go", "build", "-o", dovewardenBin, "github.com/dovewarden/dovewarden-knative/cmd/dovewarden")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build dovewarden: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// needRoot skips t when the suite cannot run here, saying why.
func needRoot(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
