package dovecottest

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// ManageSieveSession is a ManageSieve (RFC 5804) connection for tests.
// Every exchange runs under the context's deadline (DefaultIOTimeout when
// it has none).
type ManageSieveSession struct {
	conn net.Conn
	r    *bufio.Reader
	// Capabilities are the greeting's capabilities, by upper-case name
	// (e.g. "IMPLEMENTATION", "SIEVE", "SASL"), with their value ("" when
	// the capability has none).
	Capabilities map[string]string
}

// ManageSieveError is a NO or BYE reply from the server.
type ManageSieveError struct {
	Command string // the command's verb, e.g. "PUTSCRIPT"
	Status  string // "NO" or "BYE"
	Code    string // response code without parentheses, e.g. "NONEXISTENT"; may be empty
	Text    string // the server's human-readable text; may be empty
}

func (e *ManageSieveError) Error() string {
	s := "managesieve: " + e.Command + ": " + e.Status
	if e.Code != "" {
		s += " (" + e.Code + ")"
	}
	if e.Text != "" {
		s += " " + e.Text
	}
	return s
}

// DialManageSieve connects to addr and reads the greeting (capabilities up
// to the server's OK).
func DialManageSieve(ctx context.Context, addr string) (*ManageSieveSession, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("managesieve: dial %s: %w", addr, err)
	}
	s := &ManageSieveSession{conn: c, r: bufio.NewReader(c)}
	setDeadline(ctx, c)
	lines, err := s.readReply("greeting")
	if err != nil {
		c.Close()
		return nil, err
	}
	s.Capabilities = capabilities(lines)
	return s, nil
}

// LoginManageSieve dials addr and authenticates with PLAIN.
func LoginManageSieve(ctx context.Context, addr, user, pass string) (*ManageSieveSession, error) {
	s, err := DialManageSieve(ctx, addr)
	if err != nil {
		return nil, err
	}
	if err := s.Authenticate(ctx, user, pass); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the connection without LOGOUT.
func (s *ManageSieveSession) Close() error { return s.conn.Close() }

// Authenticate logs in with AUTHENTICATE "PLAIN" and the credentials as the
// base64 initial response.
func (s *ManageSieveSession) Authenticate(ctx context.Context, user, pass string) error {
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	_, err := s.cmd(ctx, "AUTHENTICATE", "PLAIN", ir)
	return err
}

// PutScript stores script under name (sent as a non-synchronizing
// literal). It does not activate it.
func (s *ManageSieveSession) PutScript(ctx context.Context, name, script string) error {
	_, err := s.send(ctx, "PUTSCRIPT", []string{name}, &script)
	return err
}

// SetActive makes the script name the active one; "" deactivates all.
func (s *ManageSieveSession) SetActive(ctx context.Context, name string) error {
	_, err := s.cmd(ctx, "SETACTIVE", name)
	return err
}

// DeleteScript deletes the script name (the server refuses the active one).
func (s *ManageSieveSession) DeleteScript(ctx context.Context, name string) error {
	_, err := s.cmd(ctx, "DELETESCRIPT", name)
	return err
}

// RenameScript renames the script oldName to newName.
func (s *ManageSieveSession) RenameScript(ctx context.Context, oldName, newName string) error {
	_, err := s.cmd(ctx, "RENAMESCRIPT", oldName, newName)
	return err
}

// ListScripts returns the names of the user's scripts in the server's order
// and the active one's ("" when none is active).
func (s *ManageSieveSession) ListScripts(ctx context.Context) (names []string, active string, err error) {
	lines, err := s.cmd(ctx, "LISTSCRIPTS")
	if err != nil {
		return nil, "", err
	}
	for _, l := range lines {
		if len(l) == 0 || l[0].kind != itemString {
			return names, active, fmt.Errorf("managesieve: LISTSCRIPTS: unexpected line %q", joinItems(l))
		}
		names = append(names, l[0].s)
		if len(l) > 1 && l[1].kind == itemAtom && strings.EqualFold(l[1].s, "ACTIVE") {
			active = l[0].s
		}
	}
	return names, active, nil
}

// GetScript returns the content of the script name.
func (s *ManageSieveSession) GetScript(ctx context.Context, name string) (string, error) {
	lines, err := s.cmd(ctx, "GETSCRIPT", name)
	if err != nil {
		return "", err
	}
	if len(lines) != 1 || len(lines[0]) != 1 || lines[0][0].kind != itemString {
		return "", fmt.Errorf("managesieve: GETSCRIPT: unexpected reply %d lines", len(lines))
	}
	return lines[0][0].s, nil
}

// Logout sends LOGOUT and closes the connection.
func (s *ManageSieveSession) Logout(ctx context.Context) error {
	_, err := s.cmd(ctx, "LOGOUT")
	var me *ManageSieveError
	if errors.As(err, &me) && me.Status == "BYE" {
		err = nil // a BYE is a normal answer to LOGOUT
	}
	return errors.Join(err, s.conn.Close())
}

// cmd sends verb with args as quoted strings and returns the lines before
// the OK reply. A NO or BYE comes back as *ManageSieveError.
func (s *ManageSieveSession) cmd(ctx context.Context, verb string, args ...string) ([][]item, error) {
	return s.send(ctx, verb, args, nil)
}

// send is cmd with, when lit is not nil, *lit sent after the args as a
// non-synchronizing literal ({N+}: RFC 5804 has clients send no other
// kind, and Dovecot reads it without a continuation request).
func (s *ManageSieveSession) send(ctx context.Context, verb string, args []string, lit *string) ([][]item, error) {
	setDeadline(ctx, s.conn)
	var b strings.Builder
	b.WriteString(verb)
	for _, a := range args {
		if strings.ContainsAny(a, "\x00\r\n") {
			return nil, fmt.Errorf("managesieve: %s: argument %q has CR, LF or NUL", verb, a)
		}
		b.WriteString(" " + Quote(a))
	}
	if lit != nil {
		fmt.Fprintf(&b, " {%d+}\r\n%s", len(*lit), *lit)
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(s.conn, b.String()); err != nil {
		return nil, fmt.Errorf("managesieve: %s: write: %w", verb, err)
	}
	return s.readReply(verb)
}

// readReply reads lines up to the final OK, NO or BYE reply.
func (s *ManageSieveSession) readReply(verb string) ([][]item, error) {
	var lines [][]item
	for {
		l, err := s.readLine()
		if err != nil {
			return lines, fmt.Errorf("managesieve: %s: %w", verb, err)
		}
		if len(l) == 0 || l[0].kind != itemAtom {
			lines = append(lines, l)
			continue
		}
		status := strings.ToUpper(l[0].s)
		if status != "OK" && status != "NO" && status != "BYE" {
			lines = append(lines, l)
			continue
		}
		if status == "OK" {
			return lines, nil
		}
		e := &ManageSieveError{Command: verb, Status: status}
		for _, it := range l[1:] {
			switch it.kind {
			case itemCode:
				e.Code = it.s
			case itemString:
				e.Text = it.s
			}
		}
		return lines, e
	}
}

// item kinds of a ManageSieve line.
const (
	itemAtom   = iota // a bare word such as OK or ACTIVE
	itemString        // a quoted string or a literal, unescaped
	itemCode          // a parenthesised response code, without the parentheses
)

type item struct {
	kind int
	s    string
}

// readLine reads one line of the server into its items, reading any
// literals ({N} or {N+}) it holds.
func (s *ManageSieveSession) readLine() ([]item, error) {
	var items []item
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return items, fmt.Errorf("read: %w", err)
		}
		switch c {
		case ' ':
		case '\r':
			if c, err = s.r.ReadByte(); err != nil || c != '\n' {
				return items, fmt.Errorf("read: CR without LF")
			}
			return items, nil
		case '\n':
			return items, nil
		case '"':
			str, err := s.readQuoted()
			if err != nil {
				return items, err
			}
			items = append(items, item{itemString, str})
		case '{':
			str, err := s.readLiteral()
			if err != nil {
				return items, err
			}
			items = append(items, item{itemString, str})
		case '(':
			code, err := s.readCode()
			if err != nil {
				return items, err
			}
			items = append(items, item{itemCode, code})
		default:
			atom := []byte{c}
			for {
				p, err := s.r.Peek(1)
				if err != nil {
					return items, fmt.Errorf("read: %w", err)
				}
				if p[0] == ' ' || p[0] == '\r' || p[0] == '\n' {
					break
				}
				b, _ := s.r.ReadByte()
				atom = append(atom, b)
			}
			items = append(items, item{itemAtom, string(atom)})
		}
	}
}

// readQuoted reads a quoted string after its opening quote.
func (s *ManageSieveSession) readQuoted() (string, error) {
	var b strings.Builder
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return b.String(), fmt.Errorf("read quoted string: %w", err)
		}
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if c, err = s.r.ReadByte(); err != nil {
				return b.String(), fmt.Errorf("read quoted string: %w", err)
			}
		case '\r', '\n':
			return b.String(), fmt.Errorf("read quoted string: line ends inside it")
		}
		b.WriteByte(c)
	}
}

// readLiteral reads "N}" or "N+}", CRLF and N octets after the "{".
func (s *ManageSieveSession) readLiteral() (string, error) {
	head, err := s.r.ReadString('}')
	if err != nil {
		return "", fmt.Errorf("read literal: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(head, "}"), "+"))
	if err != nil || n < 0 || n > 64<<20 {
		return "", fmt.Errorf("read literal: bad length {%s", head)
	}
	if crlf, err := s.r.ReadString('\n'); err != nil || strings.TrimRight(crlf, "\r\n") != "" {
		return "", fmt.Errorf("read literal: no CRLF after {%s", head)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(s.r, buf); err != nil {
		return "", fmt.Errorf("read literal: %w", err)
	}
	return string(buf), nil
}

// readCode reads a response code up to its closing parenthesis (quoted
// strings inside it kept as they are).
func (s *ManageSieveSession) readCode() (string, error) {
	var b strings.Builder
	quoted := false
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return b.String(), fmt.Errorf("read response code: %w", err)
		}
		switch {
		case c == '\r' || c == '\n':
			return b.String(), fmt.Errorf("read response code: line ends inside it")
		case c == ')' && !quoted:
			return b.String(), nil
		case c == '"':
			quoted = !quoted
		case c == '\\' && quoted:
			b.WriteByte(c)
			if c, err = s.r.ReadByte(); err != nil {
				return b.String(), fmt.Errorf("read response code: %w", err)
			}
		}
		b.WriteByte(c)
	}
}

// capabilities turns the greeting's lines ("NAME" ["value"]) into a map.
func capabilities(lines [][]item) map[string]string {
	m := make(map[string]string, len(lines))
	for _, l := range lines {
		if len(l) == 0 {
			continue
		}
		v := ""
		if len(l) > 1 {
			v = l[1].s
		}
		m[strings.ToUpper(l[0].s)] = v
	}
	return m
}

func joinItems(l []item) string {
	parts := make([]string, len(l))
	for i, it := range l {
		parts[i] = it.s
	}
	return strings.Join(parts, " ")
}
