package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
	"github.com/dovewarden/dovewarden-knative/pkg/userlist"
)

// excludedFile keeps Redis's excluded set equal to an administrator's
// file (--excluded-users): loaded at start, and again on SIGHUP. With the
// embedded Redis, whose state ends with the process, a file is the only
// lasting way to exclude users, as Dovecot's noreplicate userdb field was.
type excludedFile struct {
	path   string
	format dovecot.UsernameFormat
	st     *state.Store
	log    *slog.Logger
	m      *userlist.LoadMetrics
}

func newExcludedFile(path string, format dovecot.UsernameFormat, st *state.Store, reg prometheus.Registerer, log *slog.Logger) *excludedFile {
	return &excludedFile{path: path, format: format, st: st, log: log, m: userlist.NewLoadMetrics(reg)}
}

// load reads the file and makes it the excluded set. On an error nothing
// changes in Redis; the error names the setting.
func (e *excludedFile) load(ctx context.Context) error {
	users, err := userlist.Load(e.path, e.format)
	if err == nil {
		err = e.st.ReplaceExcluded(ctx, users)
	}
	if err != nil {
		e.m.Failed()
		return fmt.Errorf("excluded-users: %w", err)
	}
	e.m.Loaded(len(users))
	e.log.Info("excluded users loaded", "file", e.path, "users", len(users))
	return nil
}

// hangups starts catching SIGHUP (which would otherwise end the process)
// for reloadOnHangup; the caller stops it with signal.Stop.
func hangups() chan os.Signal {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// ignoreHangups keeps a SIGHUP (systemctl reload, a closed terminal) from
// ending a role that has nothing to reload: it is logged instead, until
// the returned stop is called. Without it the process would end at once,
// with no graceful stop: what a broker held would be lost.
func ignoreHangups(ctx context.Context, log *slog.Logger) (stop func()) {
	hup := hangups()
	ctx, cancel := context.WithCancel(ctx)
	go reloadOnHangup(ctx, hup, nil, log)
	return func() { signal.Stop(hup); cancel() }
}

// reloadOnHangup loads the file again on each SIGHUP until ctx ends. A
// file that does not load is logged and counted; the set loaded before
// stays. With no file, SIGHUP is logged and otherwise ignored.
func reloadOnHangup(ctx context.Context, hup <-chan os.Signal, e *excludedFile, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if e == nil {
			log.Info("SIGHUP: nothing to reload")
			continue
		}
		if err := e.load(ctx); err != nil {
			log.Error("SIGHUP: kept the excluded users loaded before", "err", err)
		}
	}
}
