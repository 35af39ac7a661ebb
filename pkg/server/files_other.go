//go:build !unix

package server

import "log/slog"

// warnFewFiles: elsewhere the limit on open files is not read.
func warnFewFiles(*slog.Logger, int) {}
