package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemo_Once runs the README's main command the way `make demo` does,
// but stops after the demonstration: real Dovecot 2.3, the built binary,
// changes checked on the other server.
func TestDemo_Once(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo starts Dovecot instances, which needs root (CI runs as root)")
	}
	bin := filepath.Join(t.TempDir(), "dovewarden")
	build := exec.Command("go", "build", "-o", bin, "github.com/dovewarden/dovewarden-knative/cmd/dovewarden")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// The demo reads config/dovecot from the repository root.
	t.Chdir("../../..")
	// The demo keeps its log in a temporary folder for a look after the
	// run; here that folder goes with the test. It must be one the Dovecot
	// instances' vmail user can traverse, which t.TempDir() is not.
	tmp, err := os.MkdirTemp("", "demo-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-once", "-bin", bin}, &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{"alice's INBOX on mail-b.demo has messages=1", `is \Flagged`, "bob's INBOX on mail-a.demo has messages=1", "/metrics"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
