package syncer

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/replicator"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// Config is the sync role's configuration. docs/configuration.md lists
// every setting.
type Config struct {
	Server server.Options
	// WriteTimeout bounds writing a response: it must outlast the longest
	// dsync (func-go's server is fixed at 30 s, too short for a first full
	// sync of a large mailbox).
	WriteTimeout time.Duration
	// RequestTimeout bounds one event's handling, retries included; it
	// stays below WriteTimeout so the answer still gets out.
	RequestTimeout time.Duration
	MaxBody        int64

	// Redis holds locks, coalescing marks, dsync states and status.
	Redis state.Conn

	Transport         string
	DoveadmURL        string
	DoveadmUser       string
	DoveadmPassword   string
	DoveadmPassFile   string
	DoveadmAPIKey     string
	DoveadmAPIKeyFile string
	DoveadmCAFile     string
	Destination       string
	DoveadmBin        string
	DoveadmConfig     string
	HostMapFile       string
	DsyncTimeout      time.Duration
	DsyncLockTimeout  time.Duration
	ExcludeMailboxes  string // as given (doveadm.ParseExcludeMailboxes)
	LockTTL           time.Duration
	ClockSkew         time.Duration
	MaxAttempts       int
	RetryBackoff      time.Duration
	RetryBackoffMax   time.Duration
	RunAgainDelay     time.Duration
	MaxRounds         int
	ResultsSink       string
	// Results, when set, takes the events ResultsSink would (no flag:
	// local mode's own broker, in process).
	Results     EventSender
	CEOverrides string
	// CACerts is Knative's K_CA_CERTS: the CAs of an https results sink.
	CACerts  string
	Source   string
	Instance string

	Sweep SweepConfig

	// UsernameFormat normalises the users of replication.requested events
	// as ingest normalises the events' (its --username-format): a request
	// for "Alice" is alice's, under alice's lock. RegisterUsernameFlag
	// declares it; an all-in-one process sets it from ingest's setting.
	UsernameFormat string

	// hostMap is built by Load from the doveadm settings and the file.
	hostMap doveadm.HostMap
	// doveadmCAs is DoveadmCAFile, read by Load (and again at each
	// request to doveadm); nil for the system's CAs.
	doveadmCAs *config.CAFile
}

// RegisterFlags declares every sync setting on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet, getenv func(string) string) {
	c.Server.RegisterFlags(fs, getenv, ":8080")
	d := replicator.Defaults
	fs.DurationVar(&c.WriteTimeout, "write-timeout", 300*time.Second, "HTTP write timeout: how long a response may take; must exceed request-timeout (Knative's timeoutSeconds must exceed request-timeout by the wait for a pod)")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", 290*time.Second, "time one event may take, dsync retries included; retries that would not fit are left to the sweep")
	fs.Int64Var(&c.MaxBody, "max-body", 256<<10, "largest accepted request body in bytes (in local mode, ingest's too)")
	c.Redis.RegisterFlags(fs, "Redis URL (redis://, rediss:// or unix://; ?master_name=NAME to find the primary through Sentinel) holding locks, coalescing marks, dsync states and status; required")
	fs.StringVar(&c.Transport, "transport", doveadm.TransportHTTP, "how dsync runs: doveadm-http (the source host's doveadm HTTP API) or doveadm-exec (a local doveadm process)")
	fs.StringVar(&c.DoveadmURL, "doveadm-url", "", "doveadm HTTP API URL of the default source host, e.g. http://mail-a:8081/doveadm/v1")
	fs.StringVar(&c.DoveadmUser, "doveadm-user", "doveadm", "HTTP Basic user for the doveadm HTTP API")
	fs.StringVar(&c.DoveadmPassword, "doveadm-password", "", "doveadm_password of the default host (prefer doveadm-password-file)")
	fs.StringVar(&c.DoveadmPassFile, "doveadm-password-file", "", "file holding doveadm_password")
	fs.StringVar(&c.DoveadmAPIKey, "doveadm-api-key", "", "doveadm_api_key (sent as 'Authorization: X-Dovecot-API BASE64(KEY)' instead of Basic auth)")
	fs.StringVar(&c.DoveadmAPIKeyFile, "doveadm-api-key-file", "", "file holding doveadm_api_key")
	fs.StringVar(&c.DoveadmCAFile, "doveadm-ca-file", "", "PEM file of the CA certificates that sign the certificates of https doveadm URLs (doveadm-url and the host map's); default: the system's")
	fs.StringVar(&c.Destination, "destination", "", "dsync destination of the default host, e.g. tcp:replica:12345")
	fs.StringVar(&c.DoveadmBin, "doveadm-bin", "doveadm", "doveadm binary (doveadm-exec)")
	fs.StringVar(&c.DoveadmConfig, "doveadm-config", "", "doveadm -c CONF of the default host (doveadm-exec); empty for Dovecot's default")
	fs.StringVar(&c.HostMapFile, "host-map-file", "", "JSON file mapping source hosts to their doveadm endpoint and destination (see docs/sync.md)")
	fs.DurationVar(&c.DsyncTimeout, "dsync-timeout", 240*time.Second, "bound of one dsync call")
	fs.DurationVar(&c.DsyncLockTimeout, "dsync-lock-timeout", d.LockTimeout, "dsync's own per-user lock timeout, lockTimeout with doveadm-http (at least 1s), -l with doveadm-exec (0: none), below dsync-timeout: a second guard behind the Redis lock")
	fs.StringVar(&c.ExcludeMailboxes, "dsync-exclude-mailboxes", "", `mailboxes every dsync leaves out (dsync's -x), comma-separated: names as clients show them (Archive/2020, Entwürfe), case-sensitive, with * and ? wildcards; a name with a comma, or beginning or ending with a space, takes ? there; special-use flags (\Junk) are refused`)
	fs.DurationVar(&c.LockTTL, "lock-ttl", d.LockTTL, "TTL of the per-user Redis lock, renewed every third of it while dsync runs; a dead owner's lock expires after it")
	fs.DurationVar(&c.ClockSkew, "clock-skew", d.ClockSkew, "margin for clock differences between Dovecot hosts and Redis: a change counts as covered only if older than a dsync's start minus this")
	fs.IntVar(&c.MaxAttempts, "max-attempts", d.MaxAttempts, "dsync attempts per event for retryable failures (unknown exit codes: at most 3)")
	fs.DurationVar(&c.RetryBackoff, "retry-backoff", d.Backoff, "delay before the first retry, the full rerun after exit code 65 or 68 included; doubles each retry")
	fs.DurationVar(&c.RetryBackoffMax, "retry-backoff-max", d.MaxBackoff, "longest delay between retries")
	fs.DurationVar(&c.RunAgainDelay, "run-again-delay", d.RunAgainDelay, "delay before re-running a dsync that answered exit code 2 (changed during sync)")
	fs.IntVar(&c.MaxRounds, "max-rounds", d.MaxRounds, "dsyncs one event may run back to back while changes keep arriving; then the user is asked for again through the Broker, behind the lane's other work")
	fs.StringVar(&c.ResultsSink, "results-sink", getenv("K_SINK"), "Broker URL for replication.failed events of attempts that are retried (default: $K_SINK); final outcomes are the reply")
	// Shown by -h as the usage's $K_SINK, not as its value: that may hold
	// a password or a token.
	fs.Lookup("results-sink").DefValue = ""
	c.CEOverrides = getenv("K_CE_OVERRIDES")
	c.CACerts = getenv("K_CA_CERTS")
	fs.StringVar(&c.Source, "source", DefaultSource, "CloudEvent source of the result events")
	host, _ := os.Hostname()
	fs.StringVar(&c.Instance, "instance", host, "name of this instance in the status record (in progress by)")
	c.Sweep.registerFlags(fs)
}

// usernameFormat parses UsernameFormat; empty leaves names as they are.
func (c *Config) usernameFormat() (dovecot.UsernameFormat, error) {
	if c.UsernameFormat == "" {
		return dovecot.UsernameFormat{}, nil
	}
	f, err := dovecot.ParseUsernameFormat(c.UsernameFormat)
	if err != nil {
		return f, fmt.Errorf("username-format: %w", err)
	}
	return f, nil
}

// RegisterUsernameFlag declares username-format, which a process that
// also runs ingest's handler shares with it.
func (c *Config) RegisterUsernameFlag(fs *flag.FlagSet) {
	fs.StringVar(&c.UsernameFormat, "username-format", dovecot.DefaultUsernameFormat, "normalise the users of replication.requested events like Dovecot's auth_username_format, as ingest's username-format does: set it to the same value")
}

// Load parses args and the environment into a validated Config.
func Load(fs *flag.FlagSet, args []string, getenv func(string) string) (Config, error) {
	var c Config
	c.RegisterFlags(fs, getenv)
	c.RegisterUsernameFlag(fs)
	if err := config.Parse(fs, args, getenv); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	err := c.Resolve(getenv)
	return c, err
}

// Resolve completes settings parsed from flags: it reads the secret files
// and the host map, then validates everything. Load calls it; an
// all-in-one process that registers the flags itself calls it after
// parsing.
func (c *Config) Resolve(getenv func(string) string) error {
	// c keeps the settings as given (the host map holds what they
	// resolve to), so that this can be called again.
	password, err := config.Secret("doveadm-password", c.DoveadmPassword, c.DoveadmPassFile)
	if err != nil {
		return err
	}
	apiKey, err := config.Secret("doveadm-api-key", c.DoveadmAPIKey, c.DoveadmAPIKeyFile)
	if err != nil {
		return err
	}
	def := doveadm.Endpoint{URL: c.DoveadmURL, User: c.DoveadmUser, Password: password, APIKey: apiKey,
		Destination: c.Destination, Config: c.DoveadmConfig}
	c.hostMap = doveadm.NewHostMap(def)
	if c.HostMapFile != "" {
		b, err := doveadm.ReadHostMapFile(c.HostMapFile)
		if err != nil {
			return fmt.Errorf("host-map-file: %w", err)
		}
		if c.hostMap, err = doveadm.ParseHostMap(b, def, getenv); err != nil {
			return fmt.Errorf("host-map-file %s: %w", c.HostMapFile, err)
		}
	}
	if c.DoveadmCAFile != "" {
		if c.doveadmCAs, err = config.LoadCAFile("doveadm-ca-file", c.DoveadmCAFile); err != nil {
			return err
		}
	}
	// A doveadm binary that is missing is reported with every other
	// setting's problem, not instead of them.
	var execErr error
	if c.Transport == doveadm.TransportExec {
		execErr = c.checkExec()
	}
	return errors.Join(execErr, c.Validate())
}

// checkExec checks at start the doveadm binary doveadm-exec runs. The
// configs it passes with -c are not looked at here: a doveadm wrapper
// (sudo, a container's exec) may read what this process cannot, or see
// other paths. A config doveadm cannot read shows at the first dsync or
// listing instead, as a configuration problem (doveadm.KindConfig), not
// as the exit code 75 of a destination that is down.
func (c *Config) checkExec() error {
	if _, err := exec.LookPath(c.DoveadmBin); err != nil {
		return fmt.Errorf("doveadm-bin: %w", err)
	}
	return nil
}

// HostMap is the validated host map.
func (c *Config) HostMap() doveadm.HostMap { return c.hostMap }

// DoveadmCAs are the CAs that https doveadm URLs' certificates are
// checked against (doveadm-ca-file); nil for the system's.
func (c *Config) DoveadmCAs() *config.CAFile { return c.doveadmCAs }

// maxLockTTL bounds lock-ttl: beyond it a value is a mistake (hours for
// seconds), which would keep the user of an owner that died from being
// replicated for that long.
const maxLockTTL = time.Hour

// Validate checks every setting and reports all problems at once, each
// naming its setting.
func (c *Config) Validate() error {
	errs := []error{c.Server.Validate()}
	if c.WriteTimeout <= 0 {
		errs = append(errs, fmt.Errorf("write-timeout %s: must be positive", c.WriteTimeout))
	}
	if c.RequestTimeout <= 0 || c.RequestTimeout >= c.WriteTimeout {
		errs = append(errs, fmt.Errorf("request-timeout %s: must be positive and below write-timeout %s", c.RequestTimeout, c.WriteTimeout))
	}
	if c.MaxBody < 1024 || c.MaxBody > 16<<20 {
		errs = append(errs, fmt.Errorf("max-body %d: want 1024 to 16777216 bytes", c.MaxBody))
	}
	if c.Redis.URL == "" {
		errs = append(errs, errors.New("redis-url: not set: sync keeps its locks and state in Redis"))
	} else {
		errs = append(errs, c.Redis.Validate())
	}
	switch c.Transport {
	case doveadm.TransportHTTP, doveadm.TransportExec:
		if err := c.hostMap.Validate(c.Transport); err != nil {
			errs = append(errs, fmt.Errorf("doveadm-url, destination, doveadm-password or host-map-file: %w", err))
		}
	default:
		errs = append(errs, fmt.Errorf("transport %q: want %s or %s", c.Transport, doveadm.TransportHTTP, doveadm.TransportExec))
	}
	switch {
	case c.DoveadmCAFile == "":
	case c.Transport != doveadm.TransportHTTP:
		errs = append(errs, fmt.Errorf("doveadm-ca-file: only with transport %s (the doveadm HTTP API)", doveadm.TransportHTTP))
	case !c.hostMap.HTTPS():
		errs = append(errs, errors.New("doveadm-ca-file: set, but no doveadm URL is https (doveadm-url, host-map-file)"))
	}
	if c.DsyncTimeout <= 0 || c.DsyncTimeout > c.RequestTimeout {
		errs = append(errs, fmt.Errorf("dsync-timeout %s: must be positive and at most request-timeout %s", c.DsyncTimeout, c.RequestTimeout))
	}
	if c.Transport == doveadm.TransportHTTP && c.DsyncLockTimeout < time.Second {
		// Measured with Dovecot 2.3 and 2.4: a dsync whose HTTP request is
		// cut off (a stop, --request-timeout, --dsync-timeout) runs on in
		// Dovecot after the Redis lock is gone.
		errs = append(errs, fmt.Errorf("dsync-lock-timeout %s: want at least 1s with %s: a dsync cut off by dovewarden keeps running in Dovecot, and only dsync's own lock keeps the user's next dsync from running beside it", c.DsyncLockTimeout, doveadm.TransportHTTP))
	} else if c.DsyncLockTimeout < 0 {
		errs = append(errs, fmt.Errorf("dsync-lock-timeout %s: must not be negative", c.DsyncLockTimeout))
	}
	// dsync takes whole seconds: doveadm-exec's -l rounds up, and
	// doveadm-http's lockTimeout to the nearest, never above that.
	if given := (c.DsyncLockTimeout + time.Second - 1).Truncate(time.Second); c.DsyncTimeout > 0 && given >= c.DsyncTimeout {
		// A dsync that waits for its own lock that long is cut off
		// first: retried as a transport failure, not answered 75 (busy).
		errs = append(errs, fmt.Errorf("dsync-lock-timeout %s: must be below dsync-timeout %s in whole seconds, rounded up (dsync is given %s), which would cut off a dsync still waiting for that lock", c.DsyncLockTimeout, c.DsyncTimeout, given))
	}
	if _, err := doveadm.ParseExcludeMailboxes(c.ExcludeMailboxes); err != nil {
		errs = append(errs, fmt.Errorf("dsync-exclude-mailboxes: %w", err))
	}
	switch {
	case c.LockTTL < 300*time.Millisecond:
		errs = append(errs, fmt.Errorf("lock-ttl %s: want at least 300ms (it is renewed every third of it)", c.LockTTL))
	case c.LockTTL > maxLockTTL:
		errs = append(errs, fmt.Errorf("lock-ttl %s: want at most %s: it is renewed every third of it while dsync runs, so a long dsync needs no longer one, and the lock of an owner that died keeps its user from being replicated that long", c.LockTTL, maxLockTTL))
	}
	if c.ClockSkew < 0 {
		errs = append(errs, fmt.Errorf("clock-skew %s: must not be negative", c.ClockSkew))
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > 20 {
		errs = append(errs, fmt.Errorf("max-attempts %d: want 1 to 20", c.MaxAttempts))
	}
	if c.RetryBackoff <= 0 || c.RetryBackoffMax < c.RetryBackoff {
		errs = append(errs, fmt.Errorf("retry-backoff %s, retry-backoff-max %s: want positive, max at least the first", c.RetryBackoff, c.RetryBackoffMax))
	}
	if c.RunAgainDelay <= 0 {
		errs = append(errs, fmt.Errorf("run-again-delay %s: must be positive", c.RunAgainDelay))
	}
	if c.MaxRounds < 1 || c.MaxRounds > 100 {
		errs = append(errs, fmt.Errorf("max-rounds %d: want 1 to 100", c.MaxRounds))
	}
	if c.ResultsSink != "" {
		if u, err := url.Parse(c.ResultsSink); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("results-sink %q: want an absolute http or https URL", config.RedactURL(c.ResultsSink)))
		}
	}
	if _, err := sink.ParseOverrides(c.CEOverrides); err != nil {
		errs = append(errs, err)
	}
	if _, err := sink.CAPool(c.CACerts); err != nil {
		errs = append(errs, err)
	}
	if err := config.EventSource("source", c.Source); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.usernameFormat(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.Sweep.validate(c.RequestTimeout)...)
	return errors.Join(errs...)
}
