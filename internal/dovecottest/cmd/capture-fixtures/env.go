package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// Credentials of the users every instance has.
const (
	user     = "u1"
	password = "pass"
	user2    = "u2"
)

// exchange is one command sent during the recorded part of a scenario and
// the server's final reply.
type exchange struct{ cmd, reply string }

// env is what scenarios act on: instance a (mail-a.test, exporting), its
// sync peer b (mail-b.test), and the scenario's IMAP session.
type env struct {
	a, b        *dovecottest.Instance
	s           *dovecottest.IMAPSession
	uids        []string // INBOX UIDs in sequence order, after prepareInbox
	uidvalidity string
	log         []exchange
}

// scenario is one fixture file: setup and done are not recorded, run is.
type scenario struct {
	file     string
	allowBad bool     // a BAD reply is the point of the scenario
	expect   []string // events that must arrive before the quiet wait
	setup    func(ctx context.Context, e *env) error
	run      func(ctx context.Context, e *env) error
	done     func(ctx context.Context, e *env) error
}

var (
	existsRe   = regexp.MustCompile(`^\* (\d+) EXISTS`)
	uidvalidRe = regexp.MustCompile(`UIDVALIDITY (\d+)`)
)

// expand replaces {uid1}, {uid2}, {uid3} and {uidvalidity}.
func (e *env) expand(s string) string {
	r := []string{"{uidvalidity}", e.uidvalidity}
	for i, u := range e.uids {
		r = append(r, fmt.Sprintf("{uid%d}", i+1), u)
	}
	return strings.NewReplacer(r...).Replace(s)
}

// do sends a recorded command on the scenario session.
func (e *env) do(ctx context.Context, cmd string) error {
	_, tagged, err := e.s.Cmd(ctx, e.expand(cmd))
	e.log = append(e.log, exchange{e.expand(cmd), tagged})
	return err
}

// doLit sends a recorded command with literals (see IMAPSession.CmdLit).
func (e *env) doLit(ctx context.Context, segments ...string) error {
	for i := 0; i < len(segments); i += 2 {
		segments[i] = e.expand(segments[i])
	}
	_, tagged, err := e.s.CmdLit(ctx, segments...)
	var shown strings.Builder
	for i, seg := range segments {
		if i%2 == 0 {
			shown.WriteString(seg)
		} else {
			fmt.Fprintf(&shown, " {%d}", len(seg))
		}
	}
	e.log = append(e.log, exchange{shown.String(), tagged})
	return err
}

// prep sends an unrecorded command; a NO is tolerated, BAD or I/O is not.
func (e *env) prep(ctx context.Context, cmd string) error {
	_, tagged, err := e.s.Cmd(ctx, e.expand(cmd))
	if err != nil {
		return fmt.Errorf("prepare %q: %w", cmd, err)
	}
	if strings.HasPrefix(tagged, "BAD") {
		return fmt.Errorf("prepare %q: %s", cmd, tagged)
	}
	return nil
}

// login opens the scenario's IMAP session on instance in.
func (e *env) login(ctx context.Context, in *dovecottest.Instance) error {
	s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, user, password)
	if err != nil {
		return err
	}
	e.s = s
	return nil
}

// prepareInbox makes INBOX hold at least n messages with \Seen, \Deleted
// and \Flagged cleared, leaves it selected and records UIDs and UIDVALIDITY.
func (e *env) prepareInbox(ctx context.Context, n int) error {
	untagged, tagged, err := e.s.Cmd(ctx, "SELECT INBOX")
	if err != nil || !dovecottest.IsOK(tagged) {
		return fmt.Errorf("prepare SELECT INBOX: %q %v", tagged, err)
	}
	exists := 0
	for _, l := range untagged {
		if m := existsRe.FindStringSubmatch(l); m != nil {
			fmt.Sscan(m[1], &exists)
		}
		if m := uidvalidRe.FindStringSubmatch(l); m != nil {
			e.uidvalidity = m[1]
		}
	}
	for i := exists; i < n; i++ {
		msg := dovecottest.TestMessage(fmt.Sprintf("capture message %d %d", i+1, time.Now().UnixNano()), "Prepared by capture-fixtures.")
		if _, err := e.s.Append(ctx, "INBOX", "", msg); err != nil {
			return err
		}
	}
	if _, _, err := e.s.Cmd(ctx, "NOOP"); err != nil {
		return err
	}
	if err := e.prep(ctx, `STORE 1:* -FLAGS.SILENT (\Seen \Deleted \Flagged)`); err != nil {
		return err
	}
	untagged, tagged, err = e.s.Cmd(ctx, "UID SEARCH ALL")
	if err != nil || !dovecottest.IsOK(tagged) {
		return fmt.Errorf("prepare UID SEARCH: %q %v", tagged, err)
	}
	e.uids = nil
	for _, l := range untagged {
		if strings.HasPrefix(l, "* SEARCH") {
			e.uids = strings.Fields(strings.TrimPrefix(l, "* SEARCH"))
		}
	}
	if len(e.uids) < n {
		return fmt.Errorf("prepare: INBOX has %d messages, want %d", len(e.uids), n)
	}
	return nil
}

// logout ends the scenario session, ignoring errors (it may be gone).
func (e *env) logout(ctx context.Context) error {
	if e.s != nil {
		_, _, _ = e.s.Cmd(ctx, "LOGOUT")
		e.s.Close()
		e.s = nil
	}
	return nil
}

// unsupported returns the reply if the server did not know a command.
func (e *env) unsupported() (cmd, reply string) {
	for _, x := range e.log {
		if strings.HasPrefix(x.reply, "BAD") && strings.Contains(x.reply, "Unknown command") {
			return x.cmd, x.reply
		}
	}
	return "", ""
}

// logoutDone is a scenario done func that logs out.
func logoutDone(ctx context.Context, e *env) error { return e.logout(ctx) }
