// Command testdeps installs what the tests install on first use when it is
// missing: Dovecot 2.3 from Debian, the Dovecot 2.4 tree (mmdebstrap) and
// redis-server. scripts/test.sh starts it in the background at the start
// of a run, so that on a fresh machine the downloads overlap the build
// instead of holding up the first test that needs them:
//
//	go run ./internal/cmd/testdeps
//
// It is idempotent and fast when everything is there. The tests still
// call the same Ensure functions, which wait on the same file locks, so a
// test that starts while this runs waits for it rather than installing
// twice. It needs root, as the tests that use these do.
package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/internal/redistest"
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Println("testdeps: not root: the tests that need Dovecot and redis-server skip or install them, and say which")
		return
	}
	start := time.Now()
	var mu sync.Mutex
	failed := false
	report := func(what string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed = true
			fmt.Printf("testdeps: %s: %v\n", what, err)
			return
		}
		fmt.Printf("testdeps: %s ready after %s\n", what, time.Since(start).Round(time.Second))
	}
	var wg sync.WaitGroup
	// Dovecot's two versions share one lock; redis-server takes apt's.
	wg.Go(func() {
		for _, v := range []string{dovecottest.V23, dovecottest.V24} {
			report("Dovecot "+v, dovecottest.Ensure(v))
		}
	})
	wg.Go(func() {
		_, err := redistest.Ensure()
		report("redis-server", err)
	})
	wg.Wait()
	if failed {
		os.Exit(1)
	}
}
