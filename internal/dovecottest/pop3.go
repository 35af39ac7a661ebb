package dovecottest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
)

// POP3Session is a raw POP3 connection for tests.
type POP3Session struct {
	conn     net.Conn
	r        *bufio.Reader
	Greeting string
}

// DialPOP3 connects to addr and reads the greeting.
func DialPOP3(ctx context.Context, addr string) (*POP3Session, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pop3: dial %s: %w", addr, err)
	}
	s := &POP3Session{conn: c, r: bufio.NewReader(c)}
	setDeadline(ctx, c)
	if s.Greeting, err = s.readLine(); err != nil {
		c.Close()
		return nil, fmt.Errorf("pop3: greeting: %w", err)
	}
	return s, nil
}

// LoginPOP3 dials addr and authenticates with USER/PASS.
func LoginPOP3(ctx context.Context, addr, user, pass string) (*POP3Session, error) {
	s, err := DialPOP3(ctx, addr)
	if err != nil {
		return nil, err
	}
	for _, c := range []string{"USER " + user, "PASS " + pass} {
		reply, err := s.Cmd(ctx, c)
		if err != nil {
			s.Close()
			return nil, err
		}
		if !strings.HasPrefix(reply, "+OK") {
			s.Close()
			return nil, fmt.Errorf("pop3: %s: %s", strings.Fields(c)[0], reply)
		}
	}
	return s, nil
}

// Close closes the connection without QUIT.
func (s *POP3Session) Close() error { return s.conn.Close() }

// Cmd sends a single-line command and returns the status line.
func (s *POP3Session) Cmd(ctx context.Context, cmd string) (string, error) {
	setDeadline(ctx, s.conn)
	if _, err := io.WriteString(s.conn, cmd+"\r\n"); err != nil {
		return "", fmt.Errorf("pop3: write: %w", err)
	}
	line, err := s.readLine()
	if err != nil {
		return line, fmt.Errorf("pop3: %s: %w", strings.Fields(cmd)[0], err)
	}
	return line, nil
}

// CmdMulti sends a command with a multi-line answer (RETR, LIST, UIDL,
// CAPA, TOP) and returns the status line and the dot-unstuffed body lines.
func (s *POP3Session) CmdMulti(ctx context.Context, cmd string) (status string, lines []string, err error) {
	status, err = s.Cmd(ctx, cmd)
	if err != nil || !strings.HasPrefix(status, "+OK") {
		return status, nil, err
	}
	for {
		l, err := s.readLine()
		if err != nil {
			return status, lines, fmt.Errorf("pop3: %s body: %w", cmd, err)
		}
		if l == "." {
			return status, lines, nil
		}
		lines = append(lines, strings.TrimPrefix(l, "."))
	}
}

func (s *POP3Session) readLine() (string, error) {
	l, err := s.r.ReadString('\n')
	if err != nil {
		return l, fmt.Errorf("pop3: read: %w", err)
	}
	return strings.TrimRight(l, "\r\n"), nil
}
