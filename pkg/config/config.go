// Package config reads a role's settings from command-line flags and from
// DOVEWARDEN_* environment variables, with flags taking precedence.
//
// Each role declares its settings once, as flags on a flag.FlagSet; Parse
// fills every flag that was not given on the command line from the matching
// environment variable (flag "broker-url" <-> DOVEWARDEN_BROKER_URL), so the
// two sources can never drift apart.
package config

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Prefix starts every environment variable the project reads.
const Prefix = "DOVEWARDEN_"

// EnvName is the environment variable that sets the flag called name.
func EnvName(name string) string {
	return Prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args into fs, then sets every flag not given in args from its
// environment variable, read with getenv. Errors name the setting. Flags
// may come after other arguments too (`replicate alice --full`); "--"
// ends the flags.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if err := parseInterspersed(fs, args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := EnvName(f.Name)
		v := getenv(env)
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
		}
	})
	return errors.Join(errs...)
}

// parseInterspersed parses args as fs.Parse does, but goes on after an
// argument that is not a flag; fs.Args() are then those arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		left := fs.Args()
		if n := len(args) - len(left); len(left) == 0 || (n > 0 && args[n-1] == "--") {
			rest = append(rest, left...)
			break
		}
		rest = append(rest, left[0])
		args = left[1:]
	}
	return fs.Parse(append([]string{"--"}, rest...))
}

// Unused returns, sorted, the names of the DOVEWARDEN_* variables in
// environ ("NAME=value" entries) that set no flag of fs and are not in
// ignore: a misspelt or misplaced setting, which Parse passes over.
func Unused(fs *flag.FlagSet, environ []string, ignore ...string) []string {
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { known[EnvName(f.Name)] = true })
	for _, name := range ignore {
		known[name] = true
	}
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, Prefix) && !known[name] {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Secret returns value, or the contents of the file named by file less its
// line ending and a leading UTF-8 byte order mark, so passwords can come
// from mounted secrets. A file that holds nothing but white space is an
// error, and so are both set: one of
// them is then stale (a DOVEWARDEN_* variable left behind when the secret
// moved to a file), and using either quietly would fail authentication
// with nothing to say why. setting names the flag for error messages.
func Secret(setting, value, file string) (string, error) {
	if value != "" && file != "" {
		return "", fmt.Errorf("%s and %s-file are both set: set one", setting, setting)
	}
	if value != "" || file == "" {
		return value, nil
	}
	b, err := ReadSecretFile(file)
	if err != nil {
		return "", fmt.Errorf("%s-file: %w", setting, err)
	}
	v := SecretText(b)
	if strings.TrimSpace(v) == "" {
		// Read as "no password" or "no token", it would turn
		// authentication off or send none.
		return "", fmt.Errorf("%s-file %s: empty", setting, file)
	}
	return v, nil
}

// SecretText is the secret a file's content b holds: b less its line
// ending and a leading UTF-8 byte order mark, which some editors write
// first and which is no part of the secret: kept, it would fail
// authentication unseen.
func SecretText(b []byte) string {
	return strings.TrimRight(strings.TrimPrefix(string(b), "\ufeff"), "\r\n")
}

// MaxSecretFile bounds a file a password, token or API key is read from:
// far more than any secret, and little enough to hold in memory.
const MaxSecretFile = 64 << 10

// ReadSecretFile reads the file a secret comes from, at most
// MaxSecretFile bytes of it (ReadFileAtMost). The error names the file;
// the caller names the setting.
func ReadSecretFile(path string) ([]byte, error) {
	return ReadFileAtMost(path, MaxSecretFile, "a password, token or key")
}

// MaxPEMFile bounds a file of a certificate chain or of a private key
// (tls-cert-file, tls-key-file, redis-cert-file, redis-key-file): a
// certificate with its intermediates is a few kilobytes, a key less.
const MaxPEMFile = 1 << 20

// ReadPEMFile reads a certificate or key file, at most MaxPEMFile bytes
// of it (ReadFileAtMost). The error names the file; the caller names the
// setting.
func ReadPEMFile(path string) ([]byte, error) {
	return ReadFileAtMost(path, MaxPEMFile, "a PEM certificate or key")
}

// ReadFileAtMost reads the file a setting names, when it is at most limit
// bytes, and reads no more of it than limit and one byte: a setting that
// names the wrong file (a log, a device such as /dev/zero, which never
// ends) must stop the start with a message, not fill the memory while it
// is read. what says what the file should hold, for the error, which
// names the file; the caller names the setting.
func ReadFileAtMost(path string, limit int, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err // names the file
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes, too large for %s: is it the right file?", path, limit, what)
	}
	return b, nil
}

// RedactURL hides a password in a URL before it reaches an error message
// or a log: the user information's (all of it when it has no ':', which
// redis-cli reads as a password), and the value of every query parameter
// whose name says it holds a secret ("password", which a Redis Sentinel URL
// gives the primary's password in, "sentinel_password", which go-redis
// refuses but an administrator may well try, any "*pass*", "*pwd*",
// "*secret*", "*token*", "*key*", "*auth*", "*sig*" (signatures of
// presigned and SAS URLs), "*cred*"; hiding a harmless one costs
// nothing). A fragment and an
// opaque part are hidden too: no URL the project takes has a use for
// them, and they are where an unescaped '#' or a missing "//" puts part
// of a password.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if bareIPv6(raw) {
			return unparsableIPv6
		}
		if strings.Contains(raw, "@") {
			// Most often a password with a '/' (base64) or '%' in it,
			// which ends the host early or escapes nothing.
			return unparsableAt
		}
		return unparsable
	}
	if strings.ContainsRune(u.Path, '@') || strings.ContainsRune(u.RawQuery, '@') || strings.ContainsRune(u.Fragment, '@') {
		// A password with '/', '?' or '#' in it ends the host early:
		// what looks like the host is then part of the user
		// information, and the rest of it is in the path, query or
		// fragment.
		return hiddenAt
	}
	if u.Fragment != "" || u.RawFragment != "" {
		u.Fragment, u.RawFragment = "xxxxx", ""
	}
	if u.Opaque != "" {
		u.Opaque = "xxxxx"
	}
	if _, has := u.User.Password(); u.User != nil && !has {
		// User information alone is a password to redis-cli
		// (redis://PASSWORD@host) and a token to many HTTP services.
		u.User = url.User("xxxxx")
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		switch {
		case err != nil:
			// What could not be parsed could still hold a password.
			u.RawQuery = "xxxxx"
		default:
			hid := false
			for k := range q {
				if SecretParam(k) {
					q.Set(k, "xxxxx")
					hid = true
				}
			}
			if hid {
				u.RawQuery = q.Encode()
			}
		}
	}
	return u.Redacted()
}

// What RedactURL shows of a URL it cannot show in part.
const (
	unparsable     = "(unparsable URL)"
	unparsableIPv6 = "(unparsable URL: an IPv6 address goes in brackets, as in http://[::1]:8080/)"
	hiddenAt       = "(URL hidden: it has an '@' after its host, where a password holding '/', '?' or '#' puts it)"
	unparsableAt   = "(unparsable URL: a password in it holding '/', '?', '#', '@' or '%' must be percent-encoded, as %2F, %3F, %23, %40, %25)"
)

// bareIPv6 says raw's host looks like an IPv6 address without the brackets
// a URL needs around it: two colons or more after the user information.
func bareIPv6(raw string) bool {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return false
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		rest = rest[i+1:]
	}
	return !strings.Contains(rest, "[") && strings.Count(rest, ":") >= 2
}

// SecretParam tells whether a query parameter's name says it holds a
// secret (RedactURL hides its value).
func SecretParam(name string) bool {
	name = strings.ToLower(name)
	for _, w := range []string{"pass", "pwd", "secret", "token", "key", "auth", "sig", "cred"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// RequestSecrets lists, longest first, what a request to u with the
// Authorization header auth (may be empty) carries that is secret, each
// as a server's answer or an error may spell it back: the URL's password
// (or its user information alone), decoded and as written, and the Basic
// credentials net/http makes of it; the values of the query parameters
// RedactURL hides; the header and its credentials, and of Basic
// credentials the password they encode.
func RequestSecrets(u *url.URL, auth string) []string {
	var out []string
	if pw, ok := u.User.Password(); ok && pw != "" {
		_, raw, _ := strings.Cut(u.User.String(), ":")
		out = append(out, pw, raw, base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pw)))
	} else if u.User != nil && !ok {
		// User information alone: a token (RedactURL).
		out = append(out, u.User.Username(), u.User.String(), base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":")))
	}
	for _, kv := range strings.FieldsFunc(u.RawQuery, func(r rune) bool { return r == '&' || r == ';' }) {
		k, raw, _ := strings.Cut(kv, "=")
		if name, err := url.QueryUnescape(k); err == nil && SecretParam(name) && raw != "" {
			out = append(out, raw)
			if v, err := url.QueryUnescape(raw); err == nil {
				out = append(out, v)
			}
		}
	}
	if auth != "" {
		out = append(out, auth)
		if scheme, cred, ok := strings.Cut(auth, " "); ok {
			cred = strings.TrimSpace(cred)
			out = append(out, cred)
			// Basic credentials are the password too, as a server
			// that decodes them may spell it back.
			if b, err := base64.StdEncoding.DecodeString(cred); err == nil && strings.EqualFold(scheme, "Basic") {
				if _, pw, ok := strings.Cut(string(b), ":"); ok {
					out = append(out, pw)
				}
			}
		}
	}
	out = slices.DeleteFunc(out, func(s string) bool { return s == "" })
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// RedactSecrets replaces each of secrets in msg with "xxxxx", as
// RedactURL hides a password (ReplaceSecrets).
func RedactSecrets(msg string, secrets []string) string {
	return ReplaceSecrets(msg, "xxxxx", secrets)
}

// ReplaceSecrets replaces every occurrence of each non-empty secret in s
// with mark, in order: a secret that holds another comes first. It also
// replaces a secret as a JSON decoder reads it (each invalid UTF-8 byte a
// U+FFFD) and as Go's %q spells either (quotes and backslashes escaped),
// since messages quote what a server answered. Every occurrence, inside
// other words too: a short password such as "test" masks part of every
// name holding it.
func ReplaceSecrets(s, mark string, secrets []string) string {
	for _, sec := range secrets {
		if sec == "" {
			continue
		}
		forms := []string{sec}
		if !utf8.ValidString(sec) {
			var b strings.Builder
			for _, r := range sec { // an invalid byte ranges as U+FFFD
				b.WriteRune(r)
			}
			forms = append(forms, b.String())
		}
		for _, f := range forms {
			s = strings.ReplaceAll(s, f, mark)
			if q := strconv.Quote(f); q[1:len(q)-1] != f {
				s = strings.ReplaceAll(s, q[1:len(q)-1], mark)
			}
		}
	}
	return s
}

// EventSource checks a CloudEvent source setting: not empty, and a URI
// reference, as the CloudEvents spec asks. One that is not (a stray '%')
// makes every event built with it invalid.
func EventSource(setting, v string) error {
	if v == "" {
		return fmt.Errorf("%s: must not be empty", setting)
	}
	if _, err := url.Parse(v); err != nil {
		return fmt.Errorf("%s %q: not a URI reference: %w", setting, v, err)
	}
	// url.Parse takes spaces and other bytes RFC 3986 leaves out of a URI
	// (they would need percent-encoding).
	if i := strings.IndexFunc(v, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"<>\^`+"`{|}", r) }); i >= 0 {
		return fmt.Errorf("%s %q: not a URI reference: %q at byte %d must be percent-encoded", setting, v, v[i:i+1], i)
	}
	return nil
}

// PEMCAs reads CA certificates given as text, as Knative gives them (a
// Destination's CACerts, K_CA_CERTS): PEM CERTIFICATE blocks, at least
// one, and nothing else (Knative's webhook checks only the first block).
// The pool holds the system's CAs and these.
func PEMCAs(text string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	rest := []byte(text)
	n := 0
	begin, end := []byte("-----BEGIN "), []byte("-----END ")
	for {
		// pem.Decode passes over text before a block, and over a
		// BEGIN line whose block has no END before the next block's:
		// both are refused here, as text after the last block is.
		rest = bytes.TrimSpace(rest)
		if len(rest) == 0 {
			break
		}
		if !bytes.HasPrefix(rest, begin) {
			if n == 0 && !bytes.Contains(rest, begin) {
				return nil, errors.New("no PEM certificate")
			}
			return nil, errors.New("text outside PEM CERTIFICATE blocks")
		}
		if e, b := bytes.Index(rest, end), bytes.Index(rest[1:], begin); e < 0 || (b >= 0 && b+1 < e) {
			return nil, fmt.Errorf("certificate %d: a PEM block without its END line", n+1)
		}
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("certificate %d: not a whole PEM block", n+1)
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM block of type %q, want CERTIFICATE", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return pool, nil
}
