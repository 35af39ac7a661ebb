// Package e2e is dovewarden's end-to-end suite: the proof that the product
// works against real Dovecot 2.3 and 2.4. It builds the dovewarden binary,
// starts real Dovecot instances (internal/dovecottest) with the shipped
// exporter snippets pointed at ingest, a real redis-server, and dovewarden
// as separate processes (`dovewarden local`, or `broker`, `sync` and
// `ingest`), makes changes over IMAP, LMTP and POP3, and checks the result
// by reading both Dovecot servers, never dovewarden's own report.
//
// Everything lives in the _test.go files; README.md explains the scenario
// matrix and how to run it.
package e2e
