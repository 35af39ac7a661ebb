package syncer

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// serveBuilt serves the sync function Build makes of cfg, as deployed,
// until the test ends.
func serveBuilt(t *testing.T, cfg Config) *httptest.Server {
	t.Helper()
	h, closeFn, err := Build(context.Background(), cfg, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFn() })
	mux := http.NewServeMux()
	h.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// TestBuild_ExcludeMailboxesReachEveryDsync: the setting, as the
// environment gives it, is in the request of each dsync the sync function
// runs (excludeMailbox), in its order, white space and repeats dropped.
func TestBuild_ExcludeMailboxesReachEveryDsync(t *testing.T) {
	dove := doveadmtest.NewServer(t, "mail-a", nil)
	mr := miniredis.RunT(t)
	cfg, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL":               "redis://" + mr.Addr(),
		"DOVEWARDEN_DOVEADM_URL":             dove.APIURL(),
		"DOVEWARDEN_DOVEADM_PASSWORD":        doveadmtest.Password,
		"DOVEWARDEN_DESTINATION":             "tcp:mail-b:12345",
		"DOVEWARDEN_DSYNC_EXCLUDE_MAILBOXES": " Junk ,Lists/*, Entwürfe,Junk",
	}))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{srv: serveBuilt(t, cfg)}
	// Build takes no list Load would refuse.
	bad := cfg
	bad.ExcludeMailboxes = `\Junk`
	if _, _, err := Build(context.Background(), bad, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil ||
		!strings.HasPrefix(err.Error(), "dsync-exclude-mailboxes: ") {
		t.Errorf("Build with %q: %v, want an error naming the setting", bad.ExcludeMailboxes, err)
	}
	for _, user := range []string{"u1", "u2"} {
		if resp, _, body := f.postBinary(t, changeEvent(t, user, time.Now().Add(-time.Minute))); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %q", user, resp.StatusCode, body)
		}
	}
	calls := dove.Tracker.Calls()
	if len(calls) != 2 {
		t.Fatalf("%d dsyncs, want 2", len(calls))
	}
	for _, c := range calls {
		if want := []string{"Junk", "Lists/*", "Entwürfe"}; !slices.Equal(c.Exclude, want) {
			t.Errorf("%s: excludeMailbox %q, want %q", c.User, c.Exclude, want)
		}
	}
}
