package dovecottest

import (
	"context"
	"os"
	"testing"
)

// TestStart_EnsureFailsLeavesNoFolder: Start makes a temporary instance
// folder when Options.Dir is empty; when Dovecot cannot be had (here: a
// Dovecot 2.4 installed where 2.3 is asked for) the folder is removed, as
// it is when the start fails later.
func TestStart_EnsureFailsLeavesNoFolder(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	ran := fakeApt(t, "2.4.1", "", nil)
	if _, err := Start(context.Background(), Options{Version: V23}); err == nil {
		t.Fatalf("Start succeeded with Dovecot 2.4 installed; commands run: %q", *ran)
	}
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}
