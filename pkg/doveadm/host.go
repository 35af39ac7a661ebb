package doveadm

import "fmt"

// ValidateHost accepts what can name a Dovecot host, a key of the host map:
// empty (the default host) or 1 to 253 bytes of letters, digits, '.', '-',
// '_' and ':'. Host names reach logs, Redis and events, so anything else
// is refused before it gets there.
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
	return nil
}
