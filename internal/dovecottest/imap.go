package dovecottest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// DefaultIOTimeout bounds a protocol exchange when the context has no deadline.
const DefaultIOTimeout = 30 * time.Second

// IMAPSession is a raw IMAP connection for tests: commands are sent exactly
// as given, with generated tags.
type IMAPSession struct {
	conn     net.Conn
	r        *bufio.Reader
	n        int
	idleTag  string
	Greeting string // the server's untagged greeting line
}

// DialIMAP connects to addr and reads the greeting.
func DialIMAP(ctx context.Context, addr string) (*IMAPSession, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("imap: dial %s: %w", addr, err)
	}
	s := &IMAPSession{conn: c, r: bufio.NewReader(c)}
	setDeadline(ctx, c)
	g, err := s.readResponseLine()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("imap: greeting: %w", err)
	}
	s.Greeting = g
	return s, nil
}

// LoginIMAP dials addr and logs in with LOGIN.
func LoginIMAP(ctx context.Context, addr, user, pass string) (*IMAPSession, error) {
	s, err := DialIMAP(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, tagged, err := s.Cmd(ctx, "LOGIN "+Quote(user)+" "+Quote(pass)); err != nil {
		s.Close()
		return nil, err
	} else if !IsOK(tagged) {
		s.Close()
		return nil, fmt.Errorf("imap: login %s: %s", user, tagged)
	}
	return s, nil
}

// Close closes the connection without LOGOUT.
func (s *IMAPSession) Close() error { return s.conn.Close() }

// Cmd sends one tagged command (without tag and CRLF) and returns the
// untagged and continuation lines received before the tagged reply, and the
// tagged reply without its tag (e.g. "OK Done."). Literals in responses are
// inlined into their line.
func (s *IMAPSession) Cmd(ctx context.Context, cmd string) (untagged []string, tagged string, err error) {
	return s.CmdLit(ctx, cmd)
}

// CmdLit sends a command containing synchronizing literals. segments
// alternate text and literal: text, literal, text, literal, ..., text. Each
// text followed by a literal gets " {N}" appended, and the literal is sent
// after the server's "+" continuation. For example
// CmdLit(ctx, `APPEND INBOX (\Seen)`, msg, "").
func (s *IMAPSession) CmdLit(ctx context.Context, segments ...string) (untagged []string, tagged string, err error) {
	if len(segments)%2 == 0 {
		return nil, "", fmt.Errorf("imap: CmdLit needs an odd number of segments")
	}
	setDeadline(ctx, s.conn)
	tag := s.nextTag()
	for i := 0; i < len(segments); i += 2 {
		text := segments[i]
		if i == 0 {
			text = tag + " " + text
		}
		if i+1 == len(segments) {
			if _, err := io.WriteString(s.conn, text+"\r\n"); err != nil {
				return untagged, "", fmt.Errorf("imap: write: %w", err)
			}
			break
		}
		lit := segments[i+1]
		if _, err := fmt.Fprintf(s.conn, "%s {%d}\r\n", text, len(lit)); err != nil {
			return untagged, "", fmt.Errorf("imap: write: %w", err)
		}
		for {
			line, err := s.readResponseLine()
			if err != nil {
				return untagged, "", err
			}
			if strings.HasPrefix(line, "+") {
				break
			}
			if strings.HasPrefix(line, tag+" ") {
				return untagged, strings.TrimPrefix(line, tag+" "), nil
			}
			untagged = append(untagged, line)
		}
		if _, err := io.WriteString(s.conn, lit); err != nil {
			return untagged, "", fmt.Errorf("imap: write literal: %w", err)
		}
	}
	u, t, err := s.readUntilTag(tag)
	return append(untagged, u...), t, err
}

// IdleStart sends IDLE and waits for the continuation.
func (s *IMAPSession) IdleStart(ctx context.Context) error {
	setDeadline(ctx, s.conn)
	tag := s.nextTag()
	if _, err := io.WriteString(s.conn, tag+" IDLE\r\n"); err != nil {
		return fmt.Errorf("imap: write IDLE: %w", err)
	}
	for {
		line, err := s.readResponseLine()
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "+") {
			s.idleTag = tag
			return nil
		}
		if strings.HasPrefix(line, tag+" ") {
			return fmt.Errorf("imap: IDLE refused: %s", line)
		}
	}
}

// IdleDone sends DONE and returns what arrived until IDLE's tagged reply.
func (s *IMAPSession) IdleDone(ctx context.Context) (untagged []string, tagged string, err error) {
	if s.idleTag == "" {
		return nil, "", fmt.Errorf("imap: DONE without IDLE")
	}
	setDeadline(ctx, s.conn)
	if _, err := io.WriteString(s.conn, "DONE\r\n"); err != nil {
		return nil, "", fmt.Errorf("imap: write DONE: %w", err)
	}
	tag := s.idleTag
	s.idleTag = ""
	return s.readUntilTag(tag)
}

// ReadLine reads one response line (literals inlined), e.g. during IDLE.
func (s *IMAPSession) ReadLine(ctx context.Context) (string, error) {
	setDeadline(ctx, s.conn)
	return s.readResponseLine()
}

// Append stores msg in mailbox with the given flags (e.g. `(\Seen)` or "").
func (s *IMAPSession) Append(ctx context.Context, mailbox, flags, msg string) (string, error) {
	head := "APPEND " + Quote(mailbox)
	if flags != "" {
		head += " " + flags
	}
	_, tagged, err := s.CmdLit(ctx, head, msg, "")
	if err != nil {
		return tagged, err
	}
	if !IsOK(tagged) {
		return tagged, fmt.Errorf("imap: APPEND %s: %s", mailbox, tagged)
	}
	return tagged, nil
}

func (s *IMAPSession) nextTag() string {
	s.n++
	return "T" + strconv.Itoa(s.n)
}

func (s *IMAPSession) readUntilTag(tag string) (untagged []string, tagged string, err error) {
	for {
		line, err := s.readResponseLine()
		if err != nil {
			return untagged, "", err
		}
		if strings.HasPrefix(line, tag+" ") {
			return untagged, strings.TrimPrefix(line, tag+" "), nil
		}
		untagged = append(untagged, line)
	}
}

// readResponseLine reads a line, inlining any literals it announces.
func (s *IMAPSession) readResponseLine() (string, error) {
	var b strings.Builder
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return b.String() + line, fmt.Errorf("imap: read: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		b.WriteString(line)
		n, ok := literalLen(line)
		if !ok {
			return b.String(), nil
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(s.r, buf); err != nil {
			return b.String(), fmt.Errorf("imap: read literal: %w", err)
		}
		b.WriteString("\r\n")
		b.Write(buf)
	}
}

// literalLen parses a trailing "{N}" or "{N+}".
func literalLen(line string) (int, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(line[i+1:len(line)-1], "+"))
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// IsOK reports whether a tagged reply (without tag) is OK.
func IsOK(tagged string) bool { return strings.HasPrefix(tagged, "OK") }

// Quote returns s as an IMAP quoted string.
func Quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func setDeadline(ctx context.Context, c net.Conn) {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(DefaultIOTimeout)
	}
	_ = c.SetDeadline(d)
}
