package dovecottest_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestEnsure installs Dovecot when missing and checks that a second call
// is idempotent: it runs no apt-get or apt-cache and leaves the 2.4 tree
// where it is, not rebuilt.
func TestEnsure(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		start := time.Now()
		if err := dovecottest.Ensure(v); err != nil {
			t.Fatalf("Ensure(%s): %v", v, err)
		}
		first := time.Since(start)
		tree, err := os.Stat(dovecottest.Root24())
		if v == dovecottest.V24 && err != nil {
			t.Fatalf("no 2.4 tree after Ensure(%s): %v", v, err)
		}
		ran, restore := dovecottest.RefuseCommands()
		start = time.Now()
		err = dovecottest.Ensure(v)
		warm := time.Since(start)
		restore()
		t.Logf("Ensure(%s): first %v, warm %v", v, first, warm)
		if err != nil {
			t.Fatalf("Ensure(%s) again: %v", v, err)
		}
		if cmds := ran(); len(cmds) > 0 {
			t.Errorf("Ensure(%s) again ran %q with Dovecot %s already there", v, cmds, v)
		}
		if v == dovecottest.V24 {
			if again, err := os.Stat(dovecottest.Root24()); err != nil || !os.SameFile(tree, again) {
				t.Errorf("Ensure(%s) again replaced the tree at %s (%v): it rebuilds what is already there", v, dovecottest.Root24(), err)
			}
		}
	}
	if err := dovecottest.Ensure("9.9"); err == nil {
		t.Error("Ensure(9.9) succeeded")
	}
}

// TestMissing: on a machine where Ensure ran, nothing is missing; an
// unknown version is reported as such.
func TestMissing(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		if err := dovecottest.Ensure(v); err != nil {
			t.Fatalf("Ensure(%s): %v", v, err)
		}
		if m := dovecottest.Missing(v); len(m) != 0 {
			t.Errorf("Missing(%s) after Ensure = %q, want none", v, m)
		}
	}
	t.Setenv(dovecottest.Root24Env, t.TempDir())
	if m := dovecottest.Missing(dovecottest.V24); len(m) != 1 || !strings.Contains(m[0], "mmdebstrap") {
		t.Errorf("Missing(2.4) without the tree = %q, want the tree made with mmdebstrap", m)
	}
	if m := dovecottest.Missing("9.9"); len(m) != 1 || !strings.Contains(m[0], "unsupported") {
		t.Errorf("Missing(9.9) = %q", m)
	}
}
