package dovecottest

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
	"time"
)

//go:embed templates/*.tmpl
var templates embed.FS

// DefaultExportFilter is the metric filter used when Options.ExporterURL is
// set but no filter is given: every event (works on 2.3 and 2.4).
const DefaultExportFilter = "event=*"

// DefaultExportTimeout is the exporter's HTTP timeout when none is given.
const DefaultExportTimeout = 2 * time.Second

// DefaultDoveadmPassword is the doveadm_password used when none is given.
const DefaultDoveadmPassword = "secret"

// clientCAName is ClientCAFile's copy in the instance folder.
const clientCAName = "client-ca.pem"

// doveadmCertName and doveadmKeyName are DoveadmCertFile's and
// DoveadmKeyFile's copies in the instance folder.
const (
	doveadmCertName = "doveadm.crt"
	doveadmKeyName  = "doveadm.key"
)

// DefaultName is the instance name (and hostname) used when none is given.
const DefaultName = "dovecottest"

// Options describes a Dovecot test instance.
type Options struct {
	// Version is "2.3" or "2.4".
	Version string
	// Name is used as instance_name and, through unshare --uts, as the
	// hostname Dovecot reports in events (e.g. "mail-a.test").
	Name string
	// Dir is the instance folder; empty means a new temporary folder.
	Dir string
	// Users maps user names to plain-text passwords (passwd-file).
	Users map[string]string
	// ExporterURL is the http-post event exporter URL; empty means none.
	ExporterURL string
	// ExportFilter is a metric filter for the exporter, e.g. `event=*`.
	ExportFilter string
	// Filters adds further metrics (one per filter) on the same exporter.
	Filters []string
	// ExportTimeout bounds one exporter POST (rounded up to seconds);
	// default DefaultExportTimeout. Dovecot drops an event that times out.
	ExportTimeout time.Duration
	// DoveadmPassword defaults to DefaultDoveadmPassword.
	DoveadmPassword string
	// ExtraConfig is appended verbatim to the generated config.
	ExtraConfig string
	// StaticUserdb makes the userdb a static one, which Dovecot cannot
	// list (`doveadm user '*'` fails), as an LDAP or SQL userdb without
	// its iterate settings; the passwd-file passdb still says who exists.
	StaticUserdb bool
	// ClientCAFile is a PEM file of the CAs that Dovecot's clients (the
	// event exporter's https URL, dsync's tcps: destinations) trust:
	// copied into the instance folder, where Dovecot 2.4's tree sees it
	// too, and named by ssl_client_ca_file. The instance's own doveadm
	// HTTP calls (DoveadmHTTP, Sync) trust it as well.
	ClientCAFile string
	// DoveadmCertFile and DoveadmKeyFile, when set, make both doveadm
	// listeners serve TLS with this certificate (chain) and key, PEM:
	// DoveadmHTTPURL is then https, and Destination a tcps: one. They are
	// copied into the instance folder. Not with DoveadmConfig.
	DoveadmCertFile, DoveadmKeyFile string
	// DoveadmConfig, when set, gives the config's doveadm part instead of
	// the generated one (doveadm_password and the doveadm service's TCP
	// and HTTP listeners), for the ports the instance got: a shipped
	// snippet under test. Its password must be DoveadmPassword.
	DoveadmConfig func(Ports) string
	// ReuseProcesses keeps the processes of the login, IMAP, POP3 and
	// ManageSieve services for later connections (service_count = 0;
	// 2.4: restart_request_count = unlimited), where Dovecot's default
	// starts a new one for each connection: the login services'
	// "high-performance mode", and the same for the others. Starting a
	// process (fork, exec, loading the plugins) is most of what a short
	// IMAP session costs here: a test that reads its users' mail over
	// IMAP hundreds of times spends half the CPU. The doveadm service,
	// which runs dsync, keeps Dovecot's default: dsync is what the tests
	// prove, so it runs as on an installation.
	ReuseProcesses bool
}

// Ports are the loopback TCP ports an instance listens on.
type Ports struct {
	IMAP, POP3, LMTP, Doveadm, DoveadmHTTP, StatsHTTP, ManageSieve int
}

type configData struct {
	Options
	Ports          Ports
	Vmail          vmailUser
	DoveadmText    string
	ExporterName   string
	TimeoutSeconds int
}

// normalize fills defaults and makes Dir absolute. It creates Dir if empty.
func (o *Options) normalize() error {
	if o.Version != V23 && o.Version != V24 {
		return fmt.Errorf("dovecottest: unsupported version %q", o.Version)
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if strings.ContainsAny(o.Name, " \t\n{}\"'$%") {
		return fmt.Errorf("dovecottest: invalid instance name %q", o.Name)
	}
	if o.DoveadmPassword == "" {
		o.DoveadmPassword = DefaultDoveadmPassword
	}
	if (o.DoveadmCertFile == "") != (o.DoveadmKeyFile == "") || o.DoveadmCertFile != "" && o.DoveadmConfig != nil {
		return errors.New("dovecottest: DoveadmCertFile and DoveadmKeyFile go together, and not with DoveadmConfig")
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "dovecottest-")
		if err != nil {
			return fmt.Errorf("dovecottest: create instance dir: %w", err)
		}
		o.Dir = d
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("dovecottest: absolute dir: %w", err)
	}
	o.Dir = abs
	return nil
}

// filters returns the metric filters to configure.
func (o *Options) filters() []string {
	var fs []string
	if o.ExportFilter != "" {
		fs = append(fs, o.ExportFilter)
	}
	fs = append(fs, o.Filters...)
	if len(fs) == 0 && o.ExporterURL != "" {
		fs = []string{DefaultExportFilter}
	}
	return fs
}

// renderConfig returns the dovecot.conf text for the options and ports,
// with vmail's ids in the passwd Dovecot reads.
func renderConfig(o Options, p Ports, vmail vmailUser) ([]byte, error) {
	name := "templates/dovecot-" + o.Version + ".conf.tmpl"
	t, err := template.ParseFS(templates, name)
	if err != nil {
		return nil, fmt.Errorf("dovecottest: parse %s: %w", name, err)
	}
	o.Filters = o.filters()
	var b bytes.Buffer
	timeout := o.ExportTimeout
	if timeout <= 0 {
		timeout = DefaultExportTimeout
	}
	secs := int((timeout + time.Second - 1) / time.Second)
	data := configData{Options: o, Ports: p, Vmail: vmail, ExporterName: "dovecottest", TimeoutSeconds: secs}
	if o.DoveadmConfig != nil {
		data.DoveadmText = o.DoveadmConfig(p)
	}
	if err := t.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("dovecottest: render %s: %w", name, err)
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// usersFile renders a passwd-file. Every user gets admin=yes so that
// commands such as SETQUOTA are allowed. A name may hold a space, which
// Dovecot takes with auth_username_chars empty.
func usersFile(users map[string]string) ([]byte, error) {
	names := make([]string, 0, len(users))
	for u := range users {
		if u == "" || strings.ContainsAny(u, ":\n") || strings.ContainsAny(users[u], ":\n") {
			return nil, fmt.Errorf("dovecottest: invalid user or password for %q", u)
		}
		names = append(names, u)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, u := range names {
		fmt.Fprintf(&b, "%s:{PLAIN}%s::::::userdb_admin=yes\n", u, users[u])
	}
	return b.Bytes(), nil
}

// freePorts reserves n distinct free ports on 127.0.0.1. They are released
// before returning, so a small race with other processes remains.
func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("dovecottest: reserve port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// prepareDir writes users, creates the mail folder owned by vmail (the
// ids Dovecot resolves the name to: vmail) and returns the config path.
func prepareDir(o Options, p Ports, vmail vmailUser) (string, error) {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return "", fmt.Errorf("dovecottest: create %s: %w", o.Dir, err)
	}
	// vmail must be able to traverse the instance folder.
	if err := os.Chmod(o.Dir, 0o755); err != nil {
		return "", fmt.Errorf("dovecottest: chmod %s: %w", o.Dir, err)
	}
	mail := filepath.Join(o.Dir, "mail")
	if err := os.MkdirAll(mail, 0o755); err != nil {
		return "", fmt.Errorf("dovecottest: create %s: %w", mail, err)
	}
	if err := os.Chown(mail, vmail.UID, vmail.GID); err != nil {
		return "", fmt.Errorf("dovecottest: chown %s: %w", mail, err)
	}
	users, err := usersFile(o.Users)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(o.Dir, "users"), users, 0o644); err != nil {
		return "", fmt.Errorf("dovecottest: write users: %w", err)
	}
	if o.ClientCAFile != "" {
		pem, err := os.ReadFile(o.ClientCAFile)
		if err != nil {
			return "", fmt.Errorf("dovecottest: client CA: %w", err)
		}
		// Readable by the stats process, which runs the exporter.
		if err := os.WriteFile(filepath.Join(o.Dir, clientCAName), pem, 0o644); err != nil {
			return "", fmt.Errorf("dovecottest: write client CA: %w", err)
		}
	}
	for _, f := range []struct{ from, to string }{{o.DoveadmCertFile, doveadmCertName}, {o.DoveadmKeyFile, doveadmKeyName}} {
		if f.from == "" {
			continue
		}
		// Dovecot reads them as root, when it loads its config.
		pem, err := os.ReadFile(f.from)
		if err == nil {
			err = os.WriteFile(filepath.Join(o.Dir, f.to), pem, 0o600)
		}
		if err != nil {
			return "", fmt.Errorf("dovecottest: doveadm certificate: %w", err)
		}
	}
	conf, err := renderConfig(o, p, vmail)
	if err != nil {
		return "", err
	}
	path := filepath.Join(o.Dir, "dovecot.conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		return "", fmt.Errorf("dovecottest: write config: %w", err)
	}
	return path, nil
}
