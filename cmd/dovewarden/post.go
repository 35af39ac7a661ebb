package main

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/sink"
)

// brokerTarget holds the settings of a command that posts CloudEvents to
// the Broker and exits (sweep, replicate).
type brokerTarget struct {
	url, source, tokenFile, caFile *string
	user, passwordFile             *string
	timeout                        *time.Duration
}

func addBrokerTarget(fs *flag.FlagSet, env *environment) brokerTarget {
	return brokerTarget{
		// No default on the flag: -h would print K_SINK, password and all.
		url:     fs.String("broker-url", "", "the Broker ingress to post to (default: $K_SINK)"),
		source:  fs.String("source", "dovewarden/cli", "CloudEvent source of the request"),
		timeout: fs.Duration("timeout", 10*time.Second, "time to hand each event to the Broker, retries included"),
		tokenFile: fs.String("broker-token-file", "", "file holding the Bearer token of a Broker ingress that asks for one "+
			"(dovewarden local with auth-token)"),
		user: fs.String("broker-user", "", "Basic auth user of a Broker ingress that asks for one (dovewarden local with auth-user), "+
			"with broker-password-file"),
		passwordFile: fs.String("broker-password-file", "", "file holding broker-user's password"),
		caFile: fs.String("tls-ca-file", "", "PEM file of the CA certificates that sign an https broker-url's certificate "+
			"(dovewarden local with tls-cert-file); default: the system's"),
	}
}

// sender checks the settings and returns the Broker's sender.
func (b brokerTarget) sender(env *environment) (*sink.Sender, error) {
	if *b.url == "" {
		*b.url = env.getenv("K_SINK")
	}
	if *b.url == "" {
		return nil, errors.New("broker-url: not set, and K_SINK is empty: where is the Broker?")
	}
	if *b.timeout <= 0 {
		return nil, fmt.Errorf("timeout %s: must be positive", *b.timeout)
	}
	if err := config.EventSource("source", *b.source); err != nil {
		return nil, err
	}
	var auth string
	if (*b.user == "") != (*b.passwordFile == "") {
		return nil, errors.New("broker-user and broker-password-file: set both or neither")
	}
	if *b.user != "" {
		if *b.tokenFile != "" {
			return nil, errors.New("broker-user and broker-token-file: choose one kind of authentication")
		}
		if u, err := url.Parse(*b.url); err == nil && u.User != nil {
			return nil, fmt.Errorf("broker-url %s: credentials in the URL and in broker-user: set one", b.shown())
		}
		pw, err := config.Secret("broker-password", "", *b.passwordFile)
		if err != nil {
			return nil, err
		}
		auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(*b.user+":"+pw))
	}
	if *b.tokenFile != "" {
		tok, err := config.Secret("broker-token", "", *b.tokenFile)
		if err != nil {
			return nil, err
		}
		auth = "Bearer " + tok
	}
	tc, err := clientTLS(*b.caFile, *b.url, "broker-url")
	if err != nil {
		return nil, err
	}
	// Knative's variables are checked first, so that their errors name
	// them and not broker-url. K_CA_CERTS is not read with tls-ca-file.
	overrides, caCerts := env.getenv("K_CE_OVERRIDES"), env.getenv("K_CA_CERTS")
	if _, err := sink.ParseOverrides(overrides); err != nil {
		return nil, err
	}
	if tc == nil {
		if _, err := sink.CAPool(caCerts); err != nil {
			return nil, err
		}
	}
	snd, err := sink.New(sink.Options{URL: *b.url, Overrides: overrides, Budget: *b.timeout,
		Retries: 3, Backoff: 100 * time.Millisecond, MaxConns: 1, Authorization: auth, TLSConfig: tc,
		CACerts: caCerts})
	if err != nil {
		return nil, fmt.Errorf("broker-url: %s", b.redactIn(err.Error()))
	}
	return snd, nil
}

// shown is the Broker URL without its password.
func (b brokerTarget) shown() string { return config.RedactURL(*b.url) }

// sendError describes a failed send without the Broker URL's password;
// a refusal of the credentials names the settings that give them.
func (b brokerTarget) sendError(err error) string {
	msg := b.redactIn(err.Error())
	var hr *cehttp.Result
	if errors.As(err, &hr) && (hr.StatusCode == http.StatusUnauthorized || hr.StatusCode == http.StatusForbidden) {
		msg += " (credentials: broker-user and broker-password-file, a user and password in broker-url, or broker-token-file)"
	}
	return msg
}

// redactIn replaces the Broker URL in msg by its redacted form: the
// sender's errors name their target.
func (b brokerTarget) redactIn(msg string) string { return strings.ReplaceAll(msg, *b.url, b.shown()) }

// clientTLS is the TLS configuration of a command that reaches
// urlSetting's URL (raw) and verifies its certificate with the CAs in
// --tls-ca-file (caFile); nil, for the system's, when that is unset.
func clientTLS(caFile, raw, urlSetting string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	if !strings.HasPrefix(strings.ToLower(raw), "https://") {
		return nil, fmt.Errorf("tls-ca-file: needs an https:// %s", urlSetting)
	}
	pool, err := config.CAPool("tls-ca-file", caFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
