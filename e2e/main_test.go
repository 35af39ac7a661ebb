package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	code := run(m)
	failures.print()
	os.Exit(code)
}

// failures lists the cases that failed, with the reason when a helper
// gave one, printed once more after the run: a failed case's output ends
// in hundreds of lines of process logs, and CI may keep only the last
// ones.
var failures failureList

type failureList struct {
	mu      sync.Mutex
	reasons map[string]string
	failed  []string
}

// reason records why the case t is failing, before the helper fails it.
func (f *failureList) reason(t testing.TB, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reasons == nil {
		f.reasons = map[string]string{}
	}
	if _, ok := f.reasons[t.Name()]; !ok {
		f.reasons[t.Name()] = why
	}
}

// watch registers, as t's first cleanup and so its last to run, the
// entry for t when it failed.
func (f *failureList) watch(t testing.TB) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.failed = append(f.failed, t.Name())
	})
}

func (f *failureList) print() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.failed) == 0 {
		return
	}
	fmt.Fprintf(os.Stderr, "e2e: %d case(s) failed (their output and logs are above):\n", len(f.failed))
	for _, name := range f.failed {
		why := f.reasons[name]
		if why == "" {
			why = "see its output"
		}
		lines := strings.Split(why, "\n")
		if len(lines) > 12 {
			lines = append(lines[:12], "...")
		}
		fmt.Fprintf(os.Stderr, "  %s: %s\n", name, strings.Join(lines, "\n    "))
	}
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		// CI runs as root; a developer without root still gets the rest of
		// `go test ./...`.
		skipReason = "the e2e suite installs Dovecot and redis-server when missing and runs Dovecot in " +
			"namespaces (unshare, chroot), which needs root; run it as root (CI does)"
		return m.Run()
	}
	caDir, err := makeSuiteCA()
	if caDir != "" {
		defer os.RemoveAll(caDir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: test CA:", err)
		return 1
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
