package broker

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Ingress is the broker's HTTP ingress, speaking the CloudEvents HTTP
// binding (binary or structured mode) like a Knative Broker's: POST at "/"
// or at "/<namespace>/<broker>" (the path of Knative's broker-ingress, any
// namespace). It answers 202 once the event is queued for every matching
// Trigger, 400 with the reason for anything that is not a valid
// CloudEvent, 413 beyond MaxBody, 503 with Retry-After when a queue is
// full or the broker is shutting down, 404 for other paths and 405 for
// other methods. As Knative's ingress, it keeps the request's
// pass-through headers (PassThroughHeaders) with the event, for its
// subscribers; the namespace of the path (Options.Namespace at "/") is
// what they get as Kn-Namespace.
func (b *Broker) Ingress() http.Handler { return http.HandlerFunc(b.serveIngress) }

func (b *Broker) serveIngress(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", "POST, OPTIONS")
	switch r.Method {
	case http.MethodPost:
	case http.MethodOptions:
		// CloudEvents webhook validation, answered as Knative's ingress does.
		w.Header().Set("WebHook-Allowed-Origin", "*")
		w.Header().Set("WebHook-Allowed-Rate", "*")
		w.WriteHeader(http.StatusOK)
		return
	default:
		b.m.refused.WithLabelValues("method").Inc()
		http.Error(w, "method not allowed: POST a CloudEvent", http.StatusMethodNotAllowed)
		return
	}
	ns, ok := b.ingressNamespace(r.URL.Path)
	if !ok {
		b.m.refused.WithLabelValues("no_broker").Inc()
		http.Error(w, fmt.Sprintf("no broker at %s: POST to / or /<namespace>/%s", r.URL.Path, b.name), http.StatusNotFound)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, b.opts.MaxBody)
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			b.m.refused.WithLabelValues("too_large").Inc()
			http.Error(w, fmt.Sprintf("event larger than %d bytes", b.opts.MaxBody), http.StatusRequestEntityTooLarge)
			return
		}
		b.m.refused.WithLabelValues("not_cloudevent").Inc()
		http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err = r.Context().Err(); err == nil {
		err = b.publish(*ev, sourceIngress, nil, PassThroughHeaders(r.Header), ns, false)
	}
	switch {
	case err == nil:
		w.WriteHeader(http.StatusAccepted)
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrClosed):
		w.Header().Set("Retry-After", retryAfterSecs)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	case errors.Is(err, ErrInvalidEvent):
		b.m.refused.WithLabelValues("invalid_event").Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
	case errors.Is(err, ErrTTLExhausted):
		b.m.refused.WithLabelValues("ttl_exhausted").Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	}
}

// ingressNamespace accepts "/" (Options.Namespace) and
// "/<namespace>/<broker>" (that namespace, which must be one Kubernetes
// could have: there would be no Broker at any other), with or without a
// trailing slash.
func (b *Broker) ingressNamespace(p string) (string, bool) {
	p = strings.Trim(p, "/")
	if p == "" {
		return b.opts.Namespace, true
	}
	parts := strings.Split(p, "/")
	if len(parts) != 2 || parts[1] != b.name || !validNamespace(parts[0]) {
		return "", false
	}
	return parts[0], true
}
