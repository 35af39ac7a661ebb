package dovecottest_test

import (
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestEnsure installs Dovecot when missing and checks that a second call
// is fast (idempotent).
func TestEnsure(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		start := time.Now()
		if err := dovecottest.Ensure(v); err != nil {
			t.Fatalf("Ensure(%s): %v", v, err)
		}
		first := time.Since(start)
		start = time.Now()
		if err := dovecottest.Ensure(v); err != nil {
			t.Fatalf("Ensure(%s) again: %v", v, err)
		}
		warm := time.Since(start)
		t.Logf("Ensure(%s): first %v, warm %v", v, first, warm)
		if warm > time.Second {
			t.Errorf("warm Ensure(%s) took %v", v, warm)
		}
	}
	if err := dovecottest.Ensure("9.9"); err == nil {
		t.Error("Ensure(9.9) succeeded")
	}
}
