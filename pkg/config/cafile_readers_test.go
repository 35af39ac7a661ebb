package config_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Several readers of one CA file (sync's two Redis clients, local mode's
// three) log each change of it once between them, whichever reader sees
// it first: also a change back to what one of them loaded before (a CA
// rotation rolled back), and a change made before the last of them was
// set up.
func TestCAFile_SeveralReadersLogEveryChange(t *testing.T) {
	a, b := newCA(t), newCA(t)
	write := func(path string, p []byte) {
		t.Helper()
		if err := os.WriteFile(path, p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	load := func(path string) *config.CAFile {
		t.Helper()
		c, err := config.LoadCAFile("redis-ca-file", path)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("a change back", func(t *testing.T) {
		var logged safebuf.Buffer
		log := slog.New(slog.NewTextHandler(&logged, nil))
		path := filepath.Join(t.TempDir(), "ca.pem")
		write(path, a)
		one, two := load(path), load(path)
		write(path, b)
		one.Pool(log) // logs the change to b
		write(path, a)
		two.Pool(log) // still has a: the first to see the change back
		one.Pool(log)
		if n := strings.Count(logged.String(), "loaded again"); n != 2 {
			t.Errorf("a to b and back to a, logged %d times, want twice:\n%s", n, logged.String())
		}
	})

	t.Run("a change before the second reader", func(t *testing.T) {
		var logged safebuf.Buffer
		log := slog.New(slog.NewTextHandler(&logged, nil))
		path := filepath.Join(t.TempDir(), "ca.pem")
		write(path, a)
		one := load(path)
		write(path, b)
		two := load(path)
		two.Pool(log)
		one.Pool(log) // the first reader trusted a until now
		if n := strings.Count(logged.String(), "loaded again"); n != 1 {
			t.Errorf("a to b while the first reader ran, logged %d times, want once:\n%s", n, logged.String())
		}
	})

	t.Run("the same content again after a failure", func(t *testing.T) {
		var logged safebuf.Buffer
		log := slog.New(slog.NewTextHandler(&logged, nil))
		path := filepath.Join(t.TempDir(), "ca.pem")
		write(path, a)
		one := load(path)
		write(path, a[:len(a)-40])
		one.Pool(log)
		write(path, a)
		one.Pool(log)
		if !strings.Contains(logged.String(), "did not load") || !strings.Contains(logged.String(), "loaded again") {
			t.Errorf("a, cut short, a again: the log does not say it loads again:\n%s", logged.String())
		}
	})
}
