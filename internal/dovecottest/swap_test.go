package dovecottest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestSwapInto_RootIsNeverMissing: a tree put in place over an existing
// one is exchanged with it in one step, so a process looking at root
// meanwhile always finds a tree (an instance starting in a gap would
// create root as a bare folder, and the rename into place would then
// fail); the old tree ends up aside, whole.
func TestSwapInto_RootIsNeverMissing(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	mk := func(path, mark string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(path, "usr/sbin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(path, "usr/sbin/mark"), []byte(mark), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The first tree: nothing to exchange with.
	mk(filepath.Join(dir, "tmp-0"), "0")
	if err := swapInto(filepath.Join(dir, "tmp-0"), root, filepath.Join(dir, "aside-0")); err != nil {
		t.Fatal(err)
	}
	var missing atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := os.Stat(filepath.Join(root, "usr/sbin/mark")); err != nil {
				missing.Add(1)
			}
		}
	}()
	const n = 200
	for i := 1; i <= n; i++ {
		tmp := filepath.Join(dir, "tmp")
		mk(tmp, string(rune('a'+i%26)))
		// Each old tree stays whole where it was put aside: a look that
		// began in it before the exchange ends in it (as a process's
		// chroot does, which is why old trees are reaped only when no
		// process uses them), not in a tree the test deleted meanwhile.
		if err := swapInto(tmp, root, filepath.Join(dir, fmt.Sprintf("aside-%d", i))); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(tmp); !os.IsNotExist(err) {
			t.Fatalf("swap %d left %s: %v", i, tmp, err)
		}
	}
	close(stop)
	<-done
	if m := missing.Load(); m != 0 {
		t.Errorf("root had no tree %d times during %d swaps", m, n)
	}
	if b, err := os.ReadFile(filepath.Join(root, "usr/sbin/mark")); err != nil || string(b) != string(rune('a'+n%26)) {
		t.Errorf("root holds %q, %v; want the last tree", b, err)
	}
}
