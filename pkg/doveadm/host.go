package doveadm

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ValidateHost accepts what can name a Dovecot host, a key of the host map:
// empty (the default host) or 1 to 253 bytes of letters, digits, '.', '-',
// '_' and ':' that parse as a URI reference, as the source of the
// CloudEvents ingest makes from a host must: so not "::1" or
// "10.0.0.1:8080", whose colon a URI reference does not allow there.
// Host names reach logs, Redis and events, so anything else is refused
// before it gets there.
func ValidateHost(host string) error {
	if len(host) > 253 {
		return fmt.Errorf("host name of %d bytes exceeds 253", len(host))
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == ':') {
			return fmt.Errorf("host %q: only letters, digits and . - _ : are allowed", host)
		}
	}
	if strings.IndexByte(host, ':') >= 0 {
		if _, err := url.Parse(host); err != nil {
			return fmt.Errorf("host %q: %w (a colon only after a leading letter); name the host (Dovecot's hostname setting), not its address", host, ErrHostNotURI)
		}
	}
	return nil
}

// ErrHostNotURI is ValidateHost's error for a host name that is no URI
// reference (an address with colons), which only a CloudEvent's source
// cannot hold.
var ErrHostNotURI = errors.New("not a URI reference, as a CloudEvent's source must be")
