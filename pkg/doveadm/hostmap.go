package doveadm

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Endpoint is one source Dovecot host as the sync function reaches it:
// where its doveadm is, how to authenticate, and where to sync to.
type Endpoint struct {
	// Name is the source host name this entry is for; empty for the
	// default entry.
	Name string
	// URL is the doveadm HTTP API, e.g. http://mail-a:8081/doveadm/v1
	// (doveadm-http).
	URL string
	// User is the HTTP Basic user; doveadm expects "doveadm".
	User string
	// Password is doveadm_password; APIKey is doveadm_api_key (sent in
	// Authorization with the scheme X-Dovecot-API, preferred when set).
	// Secrets: never logged.
	Password string
	APIKey   string
	// Destination is dsync's destination, e.g. tcp:mail-b:12345.
	Destination string
	// Config is the doveadm -c CONF file (doveadm-exec); empty for the
	// default config.
	Config string
}

// Secrets lists the endpoint's secrets, for Redact: each also as the
// doveadm HTTP API is sent it (newRequest), base64 in a header, which a
// host that answers the request back quotes. The longest come first: a
// secret may be part of another (the password of the API key, say), whose
// rest would show if the shorter were replaced first.
func (e Endpoint) Secrets() []string {
	var out []string
	if e.APIKey != "" {
		out = append(out, base64.StdEncoding.EncodeToString([]byte(e.APIKey)))
	}
	if e.Password != "" {
		user := e.User
		if user == "" {
			user = "doveadm"
		}
		out = append(out, base64.StdEncoding.EncodeToString([]byte(user+":"+e.Password)))
	}
	out = append(out, e.Password, e.APIKey)
	slices.SortStableFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// Where names the endpoint in messages: its URL without any password, or
// the doveadm config for the exec transport.
func (e Endpoint) Where() string {
	if e.URL != "" {
		return config.RedactURL(e.URL)
	}
	if e.Config != "" {
		return "doveadm -c " + e.Config
	}
	return "local doveadm"
}

// LogValue keeps secrets out of structured logs.
func (e Endpoint) LogValue() slog.Value {
	name := e.Name
	if name == "" {
		name = "default"
	}
	return slog.GroupValue(slog.String("name", name), slog.String("doveadm", e.Where()), slog.String("destination", e.Destination))
}

// HostMap maps the source host of a change to its Endpoint, so one
// deployment serves several Dovecot hosts and active-active pairs: a change
// seen on A syncs A->B, one on B syncs B->A.
type HostMap struct {
	Default Endpoint
	hosts   map[string]Endpoint
}

// NewHostMap builds a host map from a default and per-host entries; an
// entry's empty credentials and config are taken from the default (dsync
// needs the same doveadm_password on both sides anyway).
func NewHostMap(def Endpoint, hosts ...Endpoint) HostMap {
	m := HostMap{Default: def, hosts: map[string]Endpoint{}}
	for _, h := range hosts {
		if h.User == "" {
			h.User = def.User
		}
		if h.Password == "" && h.APIKey == "" {
			h.Password, h.APIKey = def.Password, def.APIKey
		}
		if h.Config == "" {
			h.Config = def.Config
		}
		m.hosts[strings.ToLower(h.Name)] = h
	}
	return m
}

// Resolve returns the endpoint for a source host, or the default.
func (m HostMap) Resolve(host string) Endpoint {
	if e, ok := m.hosts[strings.ToLower(host)]; ok {
		return e
	}
	return m.Default
}

// Names reports whether the map has an entry of its own for host; Resolve
// gives any other host the default.
func (m HostMap) Names(host string) bool {
	_, ok := m.hosts[strings.ToLower(host)]
	return ok
}

// DefaultIsNamed reports whether a named entry reaches the default's
// doveadm with the default's destination: the usual "default is mail-a"
// setup, where the default is one of the named hosts, so that a host the
// map does not name is none of them.
func (m HostMap) DefaultIsNamed() bool {
	for _, e := range m.hosts {
		if e.Where() == m.Default.Where() && e.Destination == m.Default.Destination {
			return true
		}
	}
	return false
}

// Hosts lists the named entries, sorted.
func (m HostMap) Hosts() []string {
	out := make([]string, 0, len(m.hosts))
	for h := range m.hosts {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// HTTPS reports whether any entry's doveadm URL is an https one.
func (m HostMap) HTTPS() bool {
	https := func(e Endpoint) bool { return strings.HasPrefix(strings.ToLower(e.URL), "https://") }
	if https(m.Default) {
		return true
	}
	for _, e := range m.hosts {
		if https(e) {
			return true
		}
	}
	return false
}

// Secrets lists every secret of every entry, for Redact.
func (m HostMap) Secrets() []string {
	out := m.Default.Secrets()
	for _, e := range m.hosts {
		out = append(out, e.Secrets()...)
	}
	return out
}

// Validate checks every entry for the transport; errors name the entry.
func (m HostMap) Validate(transport string) error {
	errs := []error{m.Default.validate(transport)}
	for _, h := range m.Hosts() {
		errs = append(errs, m.hosts[h].validate(transport))
	}
	return errors.Join(errs...)
}

func (e Endpoint) validate(transport string) error {
	name := "default host"
	if e.Name != "" {
		name = "host " + e.Name
	}
	var errs []error
	if transport == TransportHTTP {
		if e.URL == "" {
			errs = append(errs, fmt.Errorf("%s: no doveadm url (e.g. http://mail-a:8081/doveadm/v1)", name))
		} else if u, err := url.Parse(e.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s: doveadm url %q: want an absolute http or https URL", name, e.Where()))
		} else if p := u.Port(); p != "" && !isPort(p) {
			// Every request would fail to dial, a transport failure
			// retried as if doveadm were down.
			errs = append(errs, fmt.Errorf("%s: doveadm url %q: port %s: a TCP port is 1 to 65535", name, e.Where(), p))
		}
		if e.Password == "" && e.APIKey == "" {
			errs = append(errs, fmt.Errorf("%s: no doveadm password or API key", name))
		}
	}
	switch {
	case e.Destination == "":
		errs = append(errs, fmt.Errorf("%s: no destination (e.g. tcp:replica:12345)", name))
	case e.Destination[0] == '-' || strings.ContainsFunc(e.Destination, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		errs = append(errs, fmt.Errorf("%s: destination %q must not start with '-' or hold control characters", name, e.Destination))
	case hostPort.MatchString(e.Destination):
		// Measured with Dovecot 2.4: dsync ran "ssh 127.0.0.1:40157
		// doveadm dsync-server" and answered exit code 75, a destination
		// that is down, at every dsync. A host of letters and digits
		// alone (localhost:12345) is read as a mail location instead.
		errs = append(errs, fmt.Errorf("%s: destination %q: dsync reads a destination without tcp: or tcps: as an ssh host or a mail location, not the replica's doveadm listener: write tcp:%s (tcps:%s over TLS)", name, e.Destination, e.Destination, e.Destination))
	case mailLocation.MatchString(e.Destination) && !remotePrefix.MatchString(e.Destination) && !ipv6ish.MatchString(e.Destination):
		shown, hint := e.Destination, ""
		if u, err := url.Parse(e.Destination); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
			shown, hint = config.RedactURL(e.Destination), " (a doveadm URL is the source's, --doveadm-url or the host map's url)"
		}
		// Measured with Dovecot 2.3 and 2.4: "Fatal: -N parameter
		// requires syncing with remote host", an EOF over the HTTP API
		// (retried as if the replica were down) and exit code 75 with
		// doveadm-exec, at every dsync.
		errs = append(errs, fmt.Errorf("%s: destination %q: dsync reads it as a local mail location%s, and dovewarden syncs all namespaces (-N, allNamespaces), which dsync refuses for one: name the replica's doveadm listener, tcp:HOST:PORT (tcps: over TLS)", name, shown, hint))
	default:
		if err := checkTCPDestination(e.Destination); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// tcpTarget is what follows tcp: or tcps: in a destination dsync reaches
// over TCP: a host name or IPv4 address with an optional port, or an IPv6
// address (with a zone) in brackets with its port; or, with a '/', the
// path of doveadm's UNIX socket, which dsync connects to instead.
var tcpTarget = regexp.MustCompile(`^(\[[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?\]:[0-9]{1,5}|[A-Za-z0-9_][A-Za-z0-9._-]*(:[0-9]{1,5})?|[^:]*/.*)$`)

// ipv6ish is an IPv6 address, or one and a port, written without
// brackets (2001:db8::2:12345): hex digits, dots and two colons or more.
var ipv6ish = regexp.MustCompile(`^[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*$`)

// checkTCPDestination refuses a destination whose IPv6 address dsync
// cannot read, and a tcp: or tcps: destination that is not a host and
// port. Measured with real doveadm: tcp:[::1]:PORT works on 2.3 and 2.4;
// tcp:::1:PORT works on 2.4 but 2.3 fails its host lookup (exit code 75,
// or over the HTTP API a doveadm process that dies: an EOF, retried as if
// the replica were down); ::1:PORT, without tcp:, is read as a mail
// location by both; 2.4 misreads tcp:[::1] without a port, and an
// address without brackets or port.
func checkTCPDestination(d string) error {
	prefix, rest, ok := "tcp:", strings.TrimPrefix(d, "tcp:"), strings.HasPrefix(d, "tcp:")
	if !ok {
		prefix, rest, ok = "tcps:", strings.TrimPrefix(d, "tcps:"), strings.HasPrefix(d, "tcps:")
	}
	switch {
	case !ok && ipv6ish.MatchString(d):
		prefix, rest = "tcp:", d
	case !ok:
		return nil
	case tcpTarget.MatchString(rest):
		// Measured with Dovecot 2.3 and 2.4: a port of 0 or over 65535
		// fails every dsync with exit code 75 ("Port not known",
		// "Invalid port number"; 2.3's HTTP API closes the connection
		// without an answer), retried as if the replica were down.
		if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest, "/") && !isPort(rest[i+1:]) {
			return fmt.Errorf("destination %q: port %s: a TCP port is 1 to 65535", d, rest[i+1:])
		}
		return nil
	case !ipv6ish.MatchString(rest):
		return fmt.Errorf("destination %q: after %s dsync takes HOST:PORT, an IPv6 address in brackets with its port (%s[2001:db8::2]:12345), or doveadm's socket path", d, prefix, prefix)
	}
	// An address and a port, or an address alone (2001:db8::2:1234 is
	// both: only the port makes it one).
	if i := strings.LastIndexByte(rest, ':'); net.ParseIP(rest) == nil && net.ParseIP(rest[:i]) != nil && isPort(rest[i+1:]) {
		return fmt.Errorf("destination %q: an IPv6 address goes in brackets, with tcp: before it: write %s[%s]:%s, which Dovecot 2.3 and 2.4 both read", d, prefix, rest[:i], rest[i+1:])
	}
	return fmt.Errorf("destination %q: an IPv6 address goes in brackets with its port, with tcp: before it: write %s[ADDRESS]:PORT, which Dovecot 2.3 and 2.4 both read", d, prefix)
}

// isPort says p is a TCP port number.
func isPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536 && p[0] != '+'
}

// mailLocation is a destination dsync reads as a local mail location
// (maildir:~/Maildir, mdbox:/srv/mail): letters and digits, then a colon,
// unless it is one of remotePrefix's. Dovecot 2.3 and 2.4 read them so
// (doveadm-dsync.c).
var mailLocation = regexp.MustCompile(`^[A-Za-z0-9]+:`)

// remotePrefix is a destination dsync reaches over TCP or a command.
var remotePrefix = regexp.MustCompile(`^(tcp|tcps|remote|remoteprefix):`)

// hostPort is a destination that is a host and port alone (mail-b:12345,
// [2001:db8::2]:12345): the replica's doveadm listener without dsync's
// tcp: prefix. No mail location (maildir:~/Maildir) or ssh destination
// (remote:mail-b, mail-b) has this shape.
var hostPort = regexp.MustCompile(`^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5}$`)

// fileEntry is one host in the host-map file. There is deliberately no
// password field: secrets come from the environment or from files.
type fileEntry struct {
	URL          string `json:"url"`
	Destination  string `json:"destination"`
	User         string `json:"user"`
	PasswordEnv  string `json:"password_env"`
	PasswordFile string `json:"password_file"`
	APIKeyEnv    string `json:"api_key_env"`
	APIKeyFile   string `json:"api_key_file"`
	Config       string `json:"config"`
}

// ParseHostMap reads a host-map file: a JSON object from source host name
// to entry, e.g.
//
//	{"mail-a": {"url": "http://mail-a:8081/doveadm/v1", "destination": "tcp:mail-b:12345",
//	            "password_file": "/secrets/doveadm/password"}}
//
// Unknown fields are errors, so a misspelt setting does not pass unnoticed.
func ParseHostMap(data []byte, def Endpoint, getenv func(string) string) (HostMap, error) {
	return parseHostMap(data, def, getenv, config.ReadSecretFile)
}

// MaxHostMapFile bounds a host-map file: some 20,000 hosts' entries.
const MaxHostMapFile = 4 << 20

// ReadHostMapFile reads a host-map file, refusing one over MaxHostMapFile
// (config.ReadFileAtMost) rather than reading whole the wrong file named,
// or a device that never ends. The error names the file.
func ReadHostMapFile(path string) ([]byte, error) {
	return config.ReadFileAtMost(path, MaxHostMapFile, "a host map")
}

// HostMapVariables lists the environment variables a host-map file's
// entries take their secrets from (password_env, api_key_env), so that
// they are not taken for misspelt settings. A file that does not parse
// names none: ParseHostMap reports it.
func HostMapVariables(data []byte) []string {
	var raw map[string]fileEntry
	if json.Unmarshal(data, &raw) != nil {
		return nil
	}
	var out []string
	for _, fe := range raw {
		for _, v := range []string{fe.PasswordEnv, fe.APIKeyEnv} {
			if v != "" {
				out = append(out, v)
			}
		}
	}
	return out
}

// parseHostMap is ParseHostMap reading secret files with readFile.
func parseHostMap(data []byte, def Endpoint, getenv func(string) string, readFile func(string) ([]byte, error)) (HostMap, error) {
	var raw map[string]fileEntry
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return HostMap{}, fmt.Errorf("host map: %w", err)
	}
	// Decode reads one value: a second object (hosts appended to the
	// file as another map) or a stray brace after it was ignored.
	if _, err := dec.Token(); err != io.EOF {
		return HostMap{}, errors.New("host map: more after the host map's object: the file holds one JSON object")
	}
	var hosts []Endpoint
	errs := sameHosts(data)
	for name, fe := range raw {
		if name == "" {
			errs = append(errs, errors.New("host map: empty host name"))
			continue
		}
		// The name is what events and sweep requests carry as the host,
		// which sync refuses unless it is a plausible host name.
		if err := ValidateHost(name); err != nil {
			errs = append(errs, fmt.Errorf("host map: %w", err))
			continue
		}
		e := Endpoint{Name: name, URL: fe.URL, User: fe.User, Destination: fe.Destination, Config: fe.Config}
		var err error
		if e.Password, err = secret(name, "password", fe.PasswordEnv, fe.PasswordFile, getenv, readFile); err != nil {
			errs = append(errs, err)
		}
		if e.APIKey, err = secret(name, "api key", fe.APIKeyEnv, fe.APIKeyFile, getenv, readFile); err != nil {
			errs = append(errs, err)
		}
		hosts = append(hosts, e)
	}
	if err := errors.Join(errs...); err != nil {
		return HostMap{}, err
	}
	return NewHostMap(def, hosts...), nil
}

// sameHosts refuses host names of the file that name one host: the same
// name twice, which the decoder takes the last of quietly, or two that
// differ in case alone, since names match case-insensitively (NewHostMap)
// and which entry won was down to the order Go walks a map. data is a
// JSON object that decoded.
func sameHosts(data []byte) []error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var errs []error
	seen := map[string]string{}
	for dec.More() {
		t, err := dec.Token()
		var skip json.RawMessage
		if err != nil || dec.Decode(&skip) != nil {
			break
		}
		name, _ := t.(string)
		switch prev, ok := seen[strings.ToLower(name)]; {
		case !ok:
			seen[strings.ToLower(name)] = name
		case prev == name:
			errs = append(errs, fmt.Errorf("host map: host %q is named twice", name))
		default:
			errs = append(errs, fmt.Errorf("host map: hosts %q and %q are one: host names match case-insensitively", prev, name))
		}
	}
	return errs
}

// secret reads a secret from an environment variable or a file. Both set
// is an error, as is a file with nothing in it: the entry would otherwise
// quietly take the default host's credentials (NewHostMap).
func secret(host, what, env, file string, getenv func(string) string, readFile func(string) ([]byte, error)) (string, error) {
	field := strings.ReplaceAll(what, " ", "_")
	if env != "" && file != "" {
		return "", fmt.Errorf("host map: host %s: %s_env and %s_file are both set: set one", host, field, field)
	}
	if env != "" {
		v := getenv(env)
		if strings.TrimSpace(v) == "" {
			return "", fmt.Errorf("host map: host %s: %s_env: variable %s is empty or unset", host, field, env)
		}
		return v, nil
	}
	if file != "" {
		b, err := readFile(file)
		if err != nil {
			return "", fmt.Errorf("host map: host %s: %s_file: %w", host, field, err)
		}
		v := config.SecretText(b)
		if strings.TrimSpace(v) == "" {
			return "", fmt.Errorf("host map: host %s: %s_file %s: empty", host, field, file)
		}
		return v, nil
	}
	return "", nil
}
