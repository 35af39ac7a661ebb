package dovecottest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRemoveMountPoint_Parents: two instances whose folders share parents
// that the tree lacks (a TMPDIR below /tmp) leave none of them behind,
// whichever stops first, and the tree's own folders stay.
func TestRemoveMountPoint_Parents(t *testing.T) {
	for _, firstStops := range []int{0, 1} {
		root := t.TempDir()
		for _, d := range []string{"tmp", "home"} {
			if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		a := &Instance{root: root, Dir: "/tmp/user-0/demo/dovecottest-1"}
		b := &Instance{root: root, Dir: "/tmp/user-0/demo/dovecottest-2"}
		for _, in := range []*Instance{a, b} {
			if err := in.makeMountPoint(); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(root + in.Dir); err != nil || !fi.IsDir() {
				t.Fatalf("no mount point %s: %v", in.Dir, err)
			}
		}
		order := []*Instance{a, b}
		if firstStops == 1 {
			order = []*Instance{b, a}
		}
		order[0].removeMountPoint()
		if _, err := os.Stat(root + order[1].Dir); err != nil {
			t.Fatalf("the other instance's mount point went with the first: %v", err)
		}
		order[1].removeMountPoint()
		var left []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && p != root && d.Name() != madeParentsName {
				left = append(left, strings.TrimPrefix(p, root))
			}
			return nil
		})
		if strings.Join(left, " ") != "/home /tmp" {
			t.Errorf("instance %d stopped first: left in the tree %q, want its own /home and /tmp", firstStops, left)
		}
		if b, _ := os.ReadFile(filepath.Join(root, madeParentsName)); len(b) != 0 {
			t.Errorf("the list of made parents still has %q", b)
		}
	}
}
