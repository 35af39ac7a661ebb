// Package syncer is the sync function: a CloudEvents receiver for
// mailbox.changed and replication.requested events that runs them through
// the replicator and answers with replication.succeeded/failed events, and
// for sweep.requested events (and the PingSource's, which ask for a new
// sweep), which run the periodic sweep a batch at a time.
//
// Handler.Handle is the one entry point, a plain Go method on a CloudEvent;
// the HTTP receiver (ServeHTTP), the func-CLI function and an embedded
// broker all call it.
package syncer

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
	"github.com/dovewarden/dovewarden-knative/pkg/change"
	"github.com/dovewarden/dovewarden-knative/pkg/contract"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/replicator"
)

// Replicator runs one replication request; *replicator.Replicator is it.
type Replicator interface {
	Replicate(ctx context.Context, req change.Request) (change.Result, error)
}

// Options configure the handler.
type Options struct {
	// Source is the CloudEvent source of the result events.
	Source string
	// Budget bounds one event's handling, retries included; zero: none.
	Budget time.Duration
	// MaxBody bounds a request body (ServeHTTP).
	MaxBody int64
	// Sweeper runs sweep.requested events; nil refuses them (400).
	Sweeper Sweeper
	// Results sends events to the Broker as new events (the results
	// sink): a sweep's continuation goes that way now and then, with a
	// fresh TTL, instead of as the reply. Nil: always as the reply.
	Results EventSender
	// Username normalises the users of replication.requested events,
	// which anyone may send, as ingest normalised the changes' users; the
	// zero value leaves them as they are.
	Username dovecot.UsernameFormat
}

// EventSender sends an event to the Broker; *sink.Sender is one.
type EventSender interface {
	Send(ctx context.Context, ev cloudevents.Event) error
}

// Handler handles replication events.
type Handler struct {
	opts Options
	repl Replicator
	log  *slog.Logger
	m    *handlerMetrics
	// unackedLogs bounds the lines of replications not acknowledged.
	unackedLogs *lograte.Limiter
}

// NewHandler builds the handler.
func NewHandler(o Options, repl Replicator, reg prometheus.Registerer, log *slog.Logger) *Handler {
	if o.Source == "" {
		o.Source = DefaultSource
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 256 << 10
	}
	return &Handler{opts: o, repl: repl, log: log, m: newHandlerMetrics(reg), unackedLogs: lograte.PerMinute(5).Saying("")}
}

// DefaultSource is the source of result events unless configured.
const DefaultSource = "dovewarden/sync"

// Reasons an event is rejected (metric label values).
const (
	rejectInvalid  = "invalid_event"
	rejectType     = "unknown_type"
	rejectData     = "bad_data"
	rejectUser     = "bad_user"
	rejectHost     = "bad_host"
	rejectEncoding = "not_cloudevent"
	rejectTooLarge = "too_large"
	rejectMethod   = "method"
	rejectPath     = "path"
)

// Handle decides and runs the replication an event asks for, or one step of
// the sweep for a sweep.requested or the PingSource's event (handleSweep).
// It returns:
//   - a result event and nil: a dsync ran; the event (succeeded, or failed
//     after its last attempt) is the reply (HTTP 200);
//   - nil, nil: acknowledged with no dsync of its own (covered, merged
//     into a running dsync, excluded);
//   - nil and a *cehttp.Result: not acknowledged, with the HTTP status and
//     reason: 400 for bad input, 503 when the state store is unreachable or
//     the dsync was cut off (the Broker redelivers).
func (h *Handler) Handle(ctx context.Context, ev cloudevents.Event) (*cloudevents.Event, error) {
	h.m.received.WithLabelValues(typeLabel(ev.Type())).Inc()
	if err := ev.Validate(); err != nil {
		return nil, h.reject(rejectInvalid, "invalid CloudEvent: %v", err)
	}
	switch ev.Type() {
	case contract.TypeMailboxChanged, contract.TypeReplicationRequested:
	case contract.TypeSweepRequested, contract.TypePingSource:
		return h.handleSweep(ctx, ev)
	default:
		return nil, h.reject(rejectType, "event type %q is not handled by sync (want %s, %s, %s or %s)",
			ev.Type(), contract.TypeMailboxChanged, contract.TypeReplicationRequested, contract.TypeSweepRequested, contract.TypePingSource)
	}
	req, err := contract.ToRequest(ev)
	if err != nil {
		return nil, h.reject(rejectData, "%v", err)
	}
	// A request's user, which any system may send, is normalised as
	// ingest normalises the changes'.
	if req.Explicit {
		req.User, err = doveadm.NormalizeUser(req.User, h.opts.Username)
	} else {
		err = doveadm.ValidateUser(req.User)
	}
	if err != nil {
		return nil, h.reject(rejectUser, "event %s: %v", ev.ID(), err)
	}
	if err := checkHost(req.Host); err != nil {
		return nil, h.reject(rejectHost, "event %s: %v", ev.ID(), err)
	}
	if h.opts.Budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.opts.Budget)
		defer cancel()
	}
	prio := string(req.Priority)
	res, err := h.repl.Replicate(ctx, req)
	if err != nil {
		if errors.Is(err, replicator.ErrUnavailable) || errors.Is(err, replicator.ErrAborted) {
			h.m.decisions.WithLabelValues(string(decisionUnavailable), prio).Inc()
			// Every delivery fails so while Redis is down, retries
			// included: a few lines a minute tell it.
			h.unackedLogs.Log(ctx, h.log, slog.LevelWarn, "", "replication not acknowledged; the Broker redelivers",
				"user", req.User, "id", req.ID, "err", err)
			return nil, cehttp.NewResult(http.StatusServiceUnavailable, "%s", err.Error())
		}
		return nil, h.reject(rejectUser, "event %s: %v", ev.ID(), err)
	}
	h.m.decisions.WithLabelValues(string(res.Outcome), prio).Inc()
	var reply cloudevents.Event
	switch res.Outcome {
	case change.Synced:
		reply, err = contract.Succeeded(req, res, h.opts.Source)
	case change.Failed:
		reply, err = contract.Failed(req, *res.Failure, h.opts.Source)
	default:
		h.log.Debug("acknowledged without a dsync", "user", req.User, "id", req.ID, "outcome", res.Outcome)
		return nil, nil
	}
	if err != nil {
		// Cannot happen with valid inputs; the outcome is recorded in Redis
		// already, so acknowledge rather than run the dsync again.
		h.log.Error("could not build the result event", "user", req.User, "err", err)
		return nil, nil
	}
	return &reply, nil
}

func (h *Handler) reject(reason, format string, args ...any) error {
	h.m.rejected.WithLabelValues(reason).Inc()
	return cehttp.NewResult(http.StatusBadRequest, format, args...)
}

// checkHost accepts what can name a Dovecot host (doveadm.ValidateHost),
// and also an address with colons (10.0.0.1:8080): ingest and the host map
// refuse it, but a replication.requested from elsewhere, or spooled by an
// older version, that names one is replicated from the default host, as
// it was before they refused it, rather than dead-lettered.
func checkHost(host string) error {
	if err := doveadm.ValidateHost(host); err != nil && !errors.Is(err, doveadm.ErrHostNotURI) {
		return err
	}
	return nil
}

// typeLabel bounds the type label to the known types.
func typeLabel(t string) string {
	switch t {
	case contract.TypeMailboxChanged, contract.TypeReplicationRequested, contract.TypeSweepRequested,
		contract.TypePingSource, contract.TypeReplicationSucceeded, contract.TypeReplicationFailed:
		return t
	}
	return "other"
}
