package dovecottest

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// DeliverLMTP delivers msg from one sender to one recipient over LMTP at
// addr ("127.0.0.1:port"). Line endings of msg are normalised to CRLF.
func DeliverLMTP(addr, from, to, msg string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("lmtp: dial %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(DefaultIOTimeout))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return fmt.Errorf("lmtp: LHLO: %w", err)
	}
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("lmtp: MAIL FROM %s: %w", from, err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		return fmt.Errorf("lmtp: RCPT TO %s: %w", to, err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("lmtp: DATA: %w", err)
	}
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	if _, err := w.Write([]byte(msg)); err != nil {
		return fmt.Errorf("lmtp: write message: %w", err)
	}
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		return fmt.Errorf("lmtp: deliver to %s: %w", to, err)
	}
	if err := c.Quit(); err != nil {
		return fmt.Errorf("lmtp: QUIT: %w", err)
	}
	return nil
}
