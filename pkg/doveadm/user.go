package doveadm

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxUserLen bounds a username in bytes. Dovecot has no fixed limit; 255
// is more than any mail system uses and keeps keys and argv small.
const MaxUserLen = 255

// NormalizeUser checks user as given, normalises it with format (the
// --username-format; a dovecot.UsernameFormat) and checks the result: the
// check comes first because lower-casing would turn bytes that are not
// UTF-8 into U+FFFD, hiding them.
func NormalizeUser(user string, format interface{ Apply(string) string }) (string, error) {
	if err := ValidateUser(user); err != nil {
		return "", err
	}
	user = format.Apply(user)
	if err := ValidateUser(user); err != nil {
		return "", err
	}
	return user, nil
}

// ValidateUser rejects usernames that must never reach doveadm or Redis:
// empty, too long, not UTF-8, with control characters (they would forge
// log lines and protocol frames), starting with '-' (an option to
// doveadm's argv), holding '*' or '?' (doveadm expands them as a user
// mask, syncing every matching user), or holding U+FFFD, the replacement
// character (a JSON decoder, Dovecot's event, a structured CloudEvent,
// puts it for invalid UTF-8 or a lone surrogate such as "\ud800": the
// name that was sent is lost, and dsync would run for another).
func ValidateUser(user string) error {
	switch {
	case user == "":
		return errors.New("username is empty")
	case len(user) > MaxUserLen:
		return fmt.Errorf("username of %d bytes exceeds %d", len(user), MaxUserLen)
	case !utf8.ValidString(user):
		return errors.New("username is not valid UTF-8")
	case user[0] == '-':
		return fmt.Errorf("username %q starts with '-'", user)
	}
	for _, r := range user {
		switch {
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029':
			return fmt.Errorf("username %q has a control character", user)
		case r == '*' || r == '?':
			return fmt.Errorf("username %q has a wildcard (%q) doveadm would expand", user, r)
		case r == utf8.RuneError:
			return fmt.Errorf("username %q has U+FFFD, the replacement character: the JSON it came in had invalid UTF-8 or a lone surrogate (such as \\ud800) there, and the name that was sent is lost", user)
		}
	}
	if strings.TrimSpace(user) != user {
		// A CloudEvent's subject loses it (sdk-go trims it), so the
		// change would replicate another name.
		return fmt.Errorf("username %q begins or ends with white space", user)
	}
	return nil
}
