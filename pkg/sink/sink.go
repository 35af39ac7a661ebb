// Package sink sends CloudEvents to the Broker (Knative's K_SINK), in binary
// mode, with bounded retries inside a time budget.
package sink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
)

// Options configure a Sender.
type Options struct {
	// URL is the Broker's ingress (K_SINK).
	URL string
	// Overrides is the raw K_CE_OVERRIDES JSON ({"extensions":{...}}),
	// applied to every event sent.
	Overrides string
	// Budget bounds one Send, retries included. Dovecot's exporter waits
	// 250 ms by default and never retries, so this stays well below that.
	Budget time.Duration
	// Retries is how many times a failed send is retried within Budget.
	Retries int
	// Backoff is the first retry's delay; it doubles for each further retry.
	Backoff time.Duration
	// MaxConns bounds idle keep-alive connections kept to the Broker.
	MaxConns int
	// Authorization, when set, is sent as every request's Authorization
	// header (a Bearer token). A password in URL is sent as Basic auth.
	Authorization string
	// TLSConfig, when set, replaces the default TLS configuration of an
	// https URL.
	TLSConfig *tls.Config
	// CACerts is Knative's K_CA_CERTS: PEM certificates of the CAs that
	// sign an https URL's certificate, trusted as well as the system's.
	// Knative's SinkBinding sets it beside K_SINK when the Broker serves
	// HTTPS (transport encryption). Not used with TLSConfig.
	CACerts string
}

// Sender delivers events to one Broker URL.
type Sender struct {
	client    cloudevents.Client
	target    string
	spelled   []string // the URL as errors may spell it, each shown as target
	secrets   []string // what of a request is secret, as sent (config.RequestSecrets)
	overrides map[string]any
	opts      Options
}

// ParseOverrides decodes K_CE_OVERRIDES. Only extensions can be overridden,
// as in Knative's duck type.
func ParseOverrides(raw string) (map[string]any, error) {
	if raw == "" {
		return nil, nil
	}
	var o struct {
		Extensions map[string]any `json:"extensions"`
	}
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		return nil, fmt.Errorf("K_CE_OVERRIDES: %w", err)
	}
	probe := cloudevents.NewEvent()
	for k, v := range o.Extensions {
		switch strings.ToLower(k) {
		case contract.ExtPriority, contract.ExtPartitionKey, contract.ExtRetryBy:
			// The Triggers route on them and Kafka orders by them: an
			// override would put new mail in the bulk lane, or one
			// user's changes out of order.
			return nil, fmt.Errorf("K_CE_OVERRIDES: extension %q is dovewarden's own (the Triggers route on it); it cannot be overridden", k)
		}
		if _, ok := v.(string); !ok {
			return nil, fmt.Errorf("K_CE_OVERRIDES: extension %q: want a string value, as Knative sets them, got %v", k, v)
		}
		if err := probe.Context.SetExtension(k, v); err != nil {
			return nil, fmt.Errorf("K_CE_OVERRIDES: extension %q: %w", k, err)
		}
	}
	return o.Extensions, nil
}

// CAPool parses K_CA_CERTS into a pool of the system's CAs and these
// (config.PEMCAs); nil when raw is empty.
func CAPool(raw string) (*x509.CertPool, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, nil
	}
	pool, err := config.PEMCAs(raw)
	if err != nil {
		return nil, fmt.Errorf("K_CA_CERTS: %w", err)
	}
	return pool, nil
}

// New makes a Sender. It fails on a URL that is not absolute http(s), on
// invalid overrides and on a CACerts without a certificate.
func New(o Options) (*Sender, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("broker URL %q: want an absolute http or https URL", config.RedactURL(o.URL))
	}
	ov, err := ParseOverrides(o.Overrides)
	if err != nil {
		return nil, err
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 256
	}
	if o.TLSConfig == nil {
		pool, err := CAPool(o.CACerts)
		if err != nil {
			return nil, err
		}
		if pool != nil {
			o.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: o.Budget, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        o.MaxConns,
		MaxIdleConnsPerHost: o.MaxConns,
		IdleConnTimeout:     90 * time.Second,
		TLSClientConfig:     o.TLSConfig,
	}
	popts := []cehttp.Option{
		cehttp.WithTarget(o.URL),
		// A redirect is not an acknowledgement: followed, a 302 to a login
		// page turns the POST into a GET that answers 200.
		cehttp.WithClient(http.Client{Transport: boundedBodies{tr}, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}),
		// The SDK does not retry a 500 by default; a Broker ingress that
		// answers 500 is as likely to recover as one answering 503.
		cehttp.WithIsRetriableFunc(retriable),
	}
	if o.Authorization != "" {
		popts = append(popts, cehttp.WithHeader("Authorization", o.Authorization))
	}
	p, err := cehttp.New(popts...)
	if err != nil {
		return nil, fmt.Errorf("broker client: %w", err)
	}
	c, err := cloudevents.NewClient(p, cloudevents.WithTimeNow())
	if err != nil {
		return nil, fmt.Errorf("broker client: %w", err)
	}
	// The URL as given and as Go's transport spells it in its errors
	// (the password masked, a token in the query not): both are shown
	// as target.
	spelled := []string{o.URL}
	if r := u.Redacted(); r != o.URL {
		spelled = append(spelled, r)
	}
	return &Sender{client: c, target: config.RedactURL(o.URL), spelled: spelled, secrets: config.RequestSecrets(u, o.Authorization), overrides: ov, opts: o}, nil
}

// boundedBodies bounds what is read of an answer's body and reads what is
// left of a short one before it is closed. The SDK reads a refusal's body
// whole (a proxy's error page of megabytes, for every event) and closes an
// acknowledgement's unread, which keeps its connection from being used
// again: a new connection (and TLS handshake) for each retry of a 503.
type boundedBodies struct{ rt http.RoundTripper }

// maxBody is what is read of an answer's body; a Broker's is empty or a
// line of text.
const maxBody = 4 << 10

func (b boundedBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := b.rt.RoundTrip(r)
	if err == nil {
		resp.Body = &boundedBody{r: io.LimitReader(resp.Body, maxBody), c: resp.Body}
		if last, ok := r.Context().Value(lastRefusalKey{}).(*lastRefusal); ok && resp.StatusCode/100 != 2 {
			// The SDK reads a refusal's body only when it did not
			// retry: keep it for the error, as what is read of it.
			text, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last.status, last.body = resp.StatusCode, string(text)
			resp.Body = io.NopCloser(strings.NewReader(last.body))
		}
	}
	return resp, err
}

// lastRefusal is the status and body (what is read of it) of the last
// answer to one Send that was not a 2xx.
type lastRefusal struct {
	status int
	body   string
}

type lastRefusalKey struct{}

type boundedBody struct {
	r io.Reader
	c io.ReadCloser
}

func (b *boundedBody) Read(p []byte) (int, error) { return b.r.Read(p) }

// Close reads what is left within the bound, so that a short body's
// connection goes back to the pool, and closes.
func (b *boundedBody) Close() error {
	_, _ = io.Copy(io.Discard, b.r)
	return b.c.Close()
}

// retriable: the statuses a Broker can answer differently next time. A 404
// is a Broker not ready yet; a 413 (the event is larger than the Broker
// takes) is final, though the SDK's own list retries it.
func retriable(code int) bool {
	switch code {
	case 404, 408, 409, 425, 429:
		return true
	}
	return code >= 500
}

// Target is the Broker URL events go to, its password (if any) hidden:
// it is for logs and errors.
func (s *Sender) Target() string { return s.target }

// Send delivers ev and returns nil once the Broker acknowledged it (2xx).
// The whole attempt, retries included, ends within the budget.
func (s *Sender) Send(ctx context.Context, ev cloudevents.Event) error {
	for k, v := range s.overrides {
		ev.SetExtension(k, v)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Budget)
	defer cancel()
	last := &lastRefusal{}
	res := s.client.Send(s.withRetries(context.WithValue(ctx, lastRefusalKey{}, last)), ev)
	if cloudevents.IsACK(res) {
		return nil
	}
	return describe(res, last, s.target, s.spelled, s.secrets)
}

// withRetries asks the SDK for Retries retries, Backoff before the first
// and twice as long before each further one. The SDK's exponential
// backoff waits period·2^n before retry n, counting from 1, so its period
// is half the first delay.
func (s *Sender) withRetries(ctx context.Context) context.Context {
	if s.opts.Retries <= 0 {
		return ctx
	}
	// A period of 0 makes the SDK panic (a ticker of 0) at the first retry.
	return cloudevents.ContextWithRetriesExponentialBackoff(ctx, max(s.opts.Backoff/2, time.Nanosecond), s.opts.Retries)
}

// describe names the final HTTP status when there was one, and what the
// Broker said with it (last: the SDK leaves a refusal's body out of its
// error when it retried). Neither what the Broker answered nor the
// transport's error shows any of secrets: either may quote the request.
func describe(res error, last *lastRefusal, target string, spelled, secrets []string) error {
	var rr *cehttp.RetriesResult
	if errors.As(res, &rr) {
		res = rr.Result
	}
	var hr *cehttp.Result
	if errors.As(res, &hr) {
		msg := fmt.Sprintf("broker %s answered HTTP %d", target, hr.StatusCode)
		// The SDK's text is "CODE: DETAIL", its detail often empty.
		text := strings.TrimPrefix(res.Error(), fmt.Sprintf("%d:", hr.StatusCode))
		if last != nil && last.status == hr.StatusCode {
			text = last.body
		}
		if detail := strings.TrimSpace(config.RedactSecrets(text, secrets)); detail != "" {
			// A proxy's error page would fill every log line.
			if len(detail) > maxDetail {
				detail = strings.ToValidUTF8(detail[:maxDetail], "") + "…"
			}
			msg += ": " + detail
		}
		return &answered{msg, res}
	}
	if res == nil {
		return fmt.Errorf("broker %s: no acknowledgement", target)
	}
	// The transport's error spells the URL it posted to, with what the
	// redaction hides (a token in the query): spell it as target.
	msg := res.Error()
	for _, raw := range spelled {
		msg = strings.ReplaceAll(msg, raw, target)
	}
	return &answered{fmt.Sprintf("broker %s: %s", target, config.RedactSecrets(msg, secrets)), res}
}

// maxDetail bounds what of a Broker's refusal an error quotes.
const maxDetail = 512

// answered is a Broker's refusal: its message, and the SDK's result for
// errors.As.
type answered struct {
	msg string
	res error
}

func (a *answered) Error() string { return a.msg }
func (a *answered) Unwrap() error { return a.res }
