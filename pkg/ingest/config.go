package ingest

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/server"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// Config is the ingest role's configuration.
type Config struct {
	Server server.Options

	// BrokerURL is where CloudEvents go; Knative's K_SINK when unset.
	BrokerURL string
	// CEOverrides is Knative's K_CE_OVERRIDES.
	CEOverrides string
	// CACerts is Knative's K_CA_CERTS: the CAs of an https Broker URL.
	CACerts     string
	SendBudget  time.Duration
	SendRetries int
	SendBackoff time.Duration

	MaxBody int64

	// UsernameFormat is Dovecot's auth_username_format, applied to every
	// username (see dovecot.UsernameFormat).
	UsernameFormat string

	AuthUser         string
	AuthPassword     string
	AuthPasswordFile string
	AuthToken        string
	AuthTokenFile    string

	// Redis, when its URL is set, lets ingest record users whose change
	// could not be handed to the Broker, so the sweep replicates them.
	Redis state.Conn
}

// DefaultMaxBody is --max-body's default: twice Dovecot's largest event
// (128 KiB).
const DefaultMaxBody = 256 << 10

// RegisterFlags declares every ingest setting on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet, getenv func(string) string) {
	c.Server.RegisterFlags(fs, getenv, ":8080")
	fs.StringVar(&c.BrokerURL, "broker-url", getenv("K_SINK"), "Broker ingress URL CloudEvents are sent to (default: $K_SINK)")
	// Shown by -h as the usage's $K_SINK, not as its value: that may hold
	// a password or a token.
	fs.Lookup("broker-url").DefValue = ""
	c.CEOverrides = getenv("K_CE_OVERRIDES")
	c.CACerts = getenv("K_CA_CERTS")
	fs.DurationVar(&c.SendBudget, "send-budget", 150*time.Millisecond, "time allowed to hand one event to the Broker, retries included; keep it below Dovecot's exporter timeout (250ms by default)")
	fs.IntVar(&c.SendRetries, "send-retries", 3, "retries of a failed send within send-budget")
	fs.DurationVar(&c.SendBackoff, "send-backoff", 10*time.Millisecond, "delay before the first retry; doubles each retry")
	fs.Int64Var(&c.MaxBody, "max-body", DefaultMaxBody, "largest accepted request body in bytes (above twice Dovecot's imap_max_line_length)")
	c.RegisterHandlerFlags(fs)
	c.Redis.RegisterFlags(fs, "Redis URL (redis://, rediss:// or unix://; ?master_name=NAME to find the primary through Sentinel) to record users whose change could not be sent, for the sweep")
}

// RegisterHandlerFlags declares the settings of the HTTP handler itself
// (authentication, username format): what an all-in-one process that runs
// the handler beside other roles shares with `dovewarden ingest`.
func (c *Config) RegisterHandlerFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.UsernameFormat, "username-format", dovecot.DefaultUsernameFormat, "normalise usernames like Dovecot's auth_username_format (%Lu, %n, %{user | username}, ...): set it to the same value")
	fs.StringVar(&c.AuthUser, "auth-user", "", "require HTTP Basic auth with this user (Dovecot: http://user:pass@host/ in the exporter URL)")
	fs.StringVar(&c.AuthPassword, "auth-password", "", "password for auth-user")
	fs.StringVar(&c.AuthPasswordFile, "auth-password-file", "", "file holding the password for auth-user")
	fs.StringVar(&c.AuthToken, "auth-token", "", "require 'Authorization: Bearer TOKEN' with this token")
	fs.StringVar(&c.AuthTokenFile, "auth-token-file", "", "file holding auth-token")
}

// HandlerOptions resolves the handler settings registered by
// RegisterHandlerFlags (reading secret files) into the handler's Options.
// Errors name the setting.
func (c *Config) HandlerOptions() (Options, error) {
	// config.Secret refuses a file that holds nothing, which would
	// otherwise read as "no password" or "no token": authentication off.
	// c keeps the settings as given, so that this can be called again.
	password, err := config.Secret("auth-password", c.AuthPassword, c.AuthPasswordFile)
	if err != nil {
		return Options{}, err
	}
	tokenSetting := "auth-token"
	if c.AuthToken == "" && c.AuthTokenFile != "" {
		tokenSetting = "auth-token-file " + c.AuthTokenFile
	}
	token, err := config.Secret("auth-token", c.AuthToken, c.AuthTokenFile)
	if err != nil {
		return Options{}, err
	}
	if err := checkToken(token); err != nil {
		return Options{}, fmt.Errorf("%s: %w", tokenSetting, err)
	}
	uf, err := dovecot.ParseUsernameFormat(c.UsernameFormat)
	if err != nil {
		return Options{}, fmt.Errorf("username-format: %w", err)
	}
	var errs []error
	if (c.AuthUser == "") != (password == "") {
		errs = append(errs, errors.New("auth-user and auth-password (or auth-password-file) must be set together"))
	}
	if c.AuthUser != "" && token != "" {
		errs = append(errs, errors.New("auth-user and auth-token: choose one kind of authentication"))
	}
	if strings.Contains(c.AuthUser, ":") {
		// RFC 7617: Basic credentials are USER:PASSWORD, split at the
		// first colon, by Dovecot's exporter URL and by net/http alike.
		errs = append(errs, fmt.Errorf("auth-user %q: a colon cannot be in a Basic auth user (RFC 7617): the credentials split at the first colon, so no request would authenticate", c.AuthUser))
	}
	return Options{MaxBody: c.MaxBody, BasicUser: c.AuthUser, BasicPassword: password,
		Token: token, Username: uf}, errors.Join(errs...)
}

// Load parses args and the environment into a validated Config.
func Load(fs *flag.FlagSet, args []string, getenv func(string) string) (Config, error) {
	var c Config
	c.RegisterFlags(fs, getenv)
	if err := config.Parse(fs, args, getenv); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.Validate()
}

// Validate checks every setting and reports all problems at once, each
// naming its setting.
func (c *Config) Validate() error {
	errs := []error{c.Server.Validate()}
	if c.BrokerURL == "" {
		errs = append(errs, errors.New("broker-url: not set (nor K_SINK): ingest needs a Broker to send to"))
	} else if u, err := url.Parse(c.BrokerURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("broker-url %q: want an absolute http or https URL", config.RedactURL(c.BrokerURL)))
	}
	if _, err := sink.ParseOverrides(c.CEOverrides); err != nil {
		errs = append(errs, err)
	}
	if _, err := sink.CAPool(c.CACerts); err != nil {
		errs = append(errs, err)
	}
	if c.SendBudget < 10*time.Millisecond || c.SendBudget > 5*time.Second {
		errs = append(errs, fmt.Errorf("send-budget %s: want 10ms to 5s (below, no Broker answers in time and every change is answered 503; above, Dovecot's exporter has given up)", c.SendBudget))
	}
	if c.SendRetries < 0 || c.SendRetries > 10 {
		errs = append(errs, fmt.Errorf("send-retries %d: want 0 to 10", c.SendRetries))
	}
	if c.SendBackoff < time.Millisecond || c.SendBackoff > c.SendBudget {
		errs = append(errs, fmt.Errorf("send-backoff %s: want 1ms up to send-budget (%s)", c.SendBackoff, c.SendBudget))
	}
	if c.MaxBody < 1024 || c.MaxBody > dovecot.MaxEventSize {
		errs = append(errs, fmt.Errorf("max-body %d: want 1024 to %d bytes", c.MaxBody, dovecot.MaxEventSize))
	}
	if _, err := c.HandlerOptions(); err != nil {
		errs = append(errs, err)
	}
	if c.Redis.URL != "" {
		errs = append(errs, c.Redis.Validate())
	} else if c.Redis != (state.Conn{}) {
		errs = append(errs, errors.New("redis-ca-file, redis-cert-file, redis-key-file: set without redis-url"))
	}
	return errors.Join(errs...)
}

// checkToken refuses a Bearer token no client can send: one with white
// space or control characters (RFC 6750's b64token has neither, and HTTP
// trims white space at the ends of a header value), so nothing would
// authenticate. The token itself never appears in the error.
func checkToken(tok string) error {
	for _, r := range tok {
		switch {
		case unicode.IsSpace(r):
			return errors.New("the token contains white space, which a Bearer token cannot (only the file's final newline is ignored)")
		case unicode.IsControl(r):
			return errors.New("the token contains a control character, which a Bearer token cannot")
		}
	}
	return nil
}
