package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	ceevent "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Handler is an in-process subscriber: the function a CloudEvents HTTP
// receiver would call (the sync function's Handle), called here with the
// event exactly as the Broker would POST it. Its answer means what it
// would over HTTP with sdk-go's receiver: a nil result or an ACK is 200, a
// *cehttp.Result carries its status, any other error is 500; a returned
// event with a 2xx is the reply, published back into the broker, and a 2xx
// Result with a message but no event is a 502 (the receiver writes the
// message as the body, which Knative's filter refuses); a reply whose data
// is larger than Options.MaxBody fails as one the ingress refuses (413, to
// the dead-letter sink), as an HTTP subscriber's does. ctx ends
// at the attempt's timeout: an answer after it is lost and the attempt
// fails as an HTTP subscriber's that timed out.
type Handler func(ctx context.Context, ev cloudevents.Event) (*cloudevents.Event, protocol.Result)

// outcome is one delivery attempt's result, in HTTP terms.
type outcome struct {
	code  int    // the HTTP status (500 for a connection error or timeout)
	body  []byte // the response body of a failure, for knativeerrordata
	reply *cloudevents.Event
	// replyHdr are the pass-through headers of the response that carried
	// reply: Knative's filter hands them on with it into the broker.
	replyHdr http.Header
	// replyTooLarge is set on a 2xx answer whose reply is larger than the
	// broker's ingress takes: the reply fails as one the ingress refuses.
	replyTooLarge bool
	// transport is set when no HTTP answer came (refused, timeout).
	transport error
	// reason explains a failure in the logs.
	reason string
}

func (o outcome) ok() bool { return o.transport == nil && o.code >= 200 && o.code < 300 }

// retriable: connection errors and the statuses Retriable names.
func (o outcome) retriable() bool { return o.transport != nil || Retriable(o.code) }

// Retriable reports whether a delivery answered with HTTP status code is
// retried, as Knative's kncloudevents.SelectiveRetry decides: 5xx, 404,
// 408, 409 and 429 are; any other status goes straight to the dead-letter
// sink (or, for a 2xx, is done).
func Retriable(code int) bool {
	if code >= 500 {
		return true
	}
	switch code {
	case http.StatusNotFound, http.StatusRequestTimeout, http.StatusConflict, http.StatusTooManyRequests:
		return true
	}
	return false
}

// hop is what an attempt delivers to. Knative's dispatcher treats the two
// apart: only the subscriber is asked for a reply ("Prefer: reply") and
// has a 2xx whose body is not a CloudEvent turned into a 502 (the broker
// filter does that); any 2xx from the dead-letter sink is a success and
// its body is ignored.
type hop int

const (
	toSubscriber hop = iota
	toDeadLetterSink
)

// endpoint is a subscriber or dead-letter sink. hdr are headers an HTTP
// request carries besides the event (pass-through ones and Kn-Namespace).
type endpoint interface {
	send(ctx context.Context, ev cloudevents.Event, structured bool, to hop, hdr http.Header) outcome
	// dest names the endpoint in knativeerrordest and logs: a URL
	// without its password or secret query parameters (config.RedactURL),
	// as the dead-letter sink may be another service that logs it.
	dest() string
}

// httpEndpoint POSTs events as Knative's dispatcher does: binary mode
// (structured with the Trigger's delivery.format json, for a subscriber
// only), the pass-through headers and Kn-Namespace, "Prefer: reply" to a
// subscriber.
type httpEndpoint struct {
	url     string
	client  *http.Client
	maxBody int64
}

func (e *httpEndpoint) dest() string { return config.RedactURL(e.url) }

// redact hides in a refusal's body, which becomes knativeerrordata, the
// URL's password and secret query parameters as sent, should the
// destination quote the request back (config.RequestSecrets).
func (e *httpEndpoint) redact(body []byte) []byte {
	u, err := url.Parse(e.url)
	if err != nil || len(body) == 0 {
		return body
	}
	return []byte(config.RedactSecrets(string(body), config.RequestSecrets(u, "")))
}

func (e *httpEndpoint) send(ctx context.Context, ev cloudevents.Event, structured bool, to hop, hdr http.Header) outcome {
	if structured {
		ctx = binding.WithForceStructured(ctx)
	} else {
		ctx = binding.WithForceBinary(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, nil)
	if err != nil {
		return failed(err)
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&ev), req); err != nil {
		return failed(fmt.Errorf("encode event %s: %w", ev.ID(), err))
	}
	// After the event, as Knative's dispatcher sets them (createRequest).
	for k, v := range hdr {
		req.Header[k] = v
	}
	// An attribute no HTTP header can carry (a CR or LF in the subject)
	// would make every attempt fail the same way: not a transport error to
	// retry, but an event the destination can never get.
	if name, ok := invalidHeader(req.Header); ok {
		return outcome{code: http.StatusBadRequest, reason: fmt.Sprintf("event %s cannot be sent: header %s holds a control character", ev.ID(), name),
			body: []byte("invalid header field value for " + name)}
	}
	if to == toSubscriber {
		req.Header.Set("Prefer", "reply")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		// net/http hides the password in the error, not a token in the
		// query; the error reaches logs and knativeerrordata.
		var ue *url.Error
		if errors.As(err, &ue) {
			ue.URL = e.dest()
		}
		return failed(err)
	}
	defer resp.Body.Close()
	if to == toDeadLetterSink && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Done, whatever the body holds (a webhook's "ok"); it is read,
		// boundedly, only so that the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, e.maxBody))
		return outcome{code: resp.StatusCode}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, e.maxBody+1))
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		if err != nil {
			body = fmt.Appendf(nil, "dispatch resulted in status %q. Could not read response body: error: %s", resp.Status, err)
		}
		return outcome{code: resp.StatusCode, body: e.redact(body), reason: "HTTP " + resp.Status}
	}
	if err != nil {
		return outcome{code: http.StatusInternalServerError, body: fmt.Appendf(nil, "Failed to read response body: %s", err), reason: err.Error()}
	}
	if int64(len(body)) > e.maxBody {
		switch cehttp.NewMessage(resp.Header, nil).ReadEncoding() {
		case binding.EncodingUnknown:
			// Not a CloudEvent: Knative's filter answers 502, as readReply.
			return outcome{code: http.StatusBadGateway, reason: fmt.Sprintf("received a non-empty response not recognized as CloudEvent (over %d bytes)", e.maxBody)}
		case binding.EncodingBatch:
			// A batch is never one event: Knative's filter fails to read
			// it and answers 502 (readReply), whatever its size.
			return outcome{code: http.StatusBadGateway, reason: fmt.Sprintf("malformed reply: a CloudEvents batch, not one event (over %d bytes)", e.maxBody)}
		}
		// A reply larger than the ingress takes. The subscriber answered;
		// delivering the event again would only make the same reply, so
		// the delivery is done and the reply fails as one the ingress
		// refuses (413), which is not retried. Knative, with no such
		// bound, would publish it.
		return outcome{code: resp.StatusCode, replyTooLarge: true, replyHdr: PassThroughHeaders(resp.Header),
			reason: fmt.Sprintf("reply larger than %d bytes", e.maxBody)}
	}
	o := readReply(ctx, resp.StatusCode, resp.Header, body)
	if o.reply != nil {
		o.replyHdr = PassThroughHeaders(resp.Header)
	}
	return o
}

// readReply turns a subscriber's 2xx answer into an outcome as Knative's
// broker filter does: an empty body is done, a CloudEvent is the reply,
// anything else is a 502 (which is retried).
func readReply(ctx context.Context, code int, h http.Header, body []byte) outcome {
	msg := cehttp.NewMessage(h, io.NopCloser(bytes.NewReader(body)))
	defer msg.Finish(nil)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		if len(body) > 0 {
			return outcome{code: http.StatusBadGateway, reason: "received a non-empty response not recognized as CloudEvent"}
		}
		return outcome{code: code}
	}
	reply, err := binding.ToEvent(ctx, msg)
	if err != nil {
		return outcome{code: http.StatusBadGateway, reason: "malformed reply: " + err.Error()}
	}
	return outcome{code: code, reply: reply}
}

// invalidHeader finds a header value net/http would refuse to send: one
// holding a control character other than tab.
func invalidHeader(h http.Header) (string, bool) {
	for name, vs := range h {
		for _, v := range vs {
			if headerCTL(v) >= 0 {
				return name, true
			}
		}
	}
	return "", false
}

// headerCTL is the index of the first byte of v that no HTTP header value
// can hold (a control character other than tab, as net/http checks), or
// -1.
func headerCTL(v string) int {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return i
		}
	}
	return -1
}

// failed is an attempt that got no HTTP answer. Knative reports it as a
// 500 with "dispatch error: ..." as the body.
func failed(err error) outcome {
	return outcome{code: http.StatusInternalServerError, body: []byte("dispatch error: " + err.Error()), transport: err, reason: err.Error()}
}

// handlerEndpoint calls an in-process Handler. maxBody bounds its reply as
// httpEndpoint bounds an HTTP subscriber's.
type handlerEndpoint struct {
	name    string
	h       Handler
	maxBody int64
}

func (e *handlerEndpoint) dest() string { return "inprocess://" + e.name }

// It gets no headers: a Handler sees the event only (its reply has no
// pass-through headers either).
func (e *handlerEndpoint) send(ctx context.Context, ev cloudevents.Event, _ bool, to hop, _ http.Header) (o outcome) {
	defer func() {
		r := recover()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// The handler answered (or panicked) after the attempt's
			// timeout. Knative's dispatcher bounds each request with
			// http.Client.Timeout: its answer would be lost and the
			// attempt a transport error, as an HTTP subscriber's here.
			o = failed(&url.Error{Op: "Post", URL: e.dest(), Err: context.DeadlineExceeded})
			return
		}
		// sdk-go's receiver turns a panicking handler into a 500 too.
		if r != nil {
			o = outcome{code: http.StatusInternalServerError, reason: fmt.Sprintf("handler panicked: %v", r)}
		}
	}()
	reply, res := e.h(ctx, ev.Clone())
	code, body := statusOf(res)
	if code < 200 || code >= 300 {
		// sdk-go writes the event with the failure status; Knative drops it.
		reason := fmt.Sprintf("HTTP %d", code)
		if res != nil {
			reason += ": " + res.Error()
		}
		return outcome{code: code, body: body, reason: reason}
	}
	if to == toDeadLetterSink {
		// A dead-letter sink's reply is ignored, as Knative does.
		return outcome{code: code}
	}
	if reply == nil {
		if len(body) > 0 {
			// sdk-go's receiver writes a 2xx Result's message as the
			// response body, with no event: a body Knative's filter takes
			// for a malformed reply (502, retried), as readReply does for
			// an HTTP subscriber.
			return outcome{code: http.StatusBadGateway, reason: fmt.Sprintf("HTTP %d with body %q: received a non-empty response not recognized as CloudEvent", code, body)}
		}
		return outcome{code: code}
	}
	if int64(len(reply.DataEncoded)) > e.maxBody {
		// sdk-go's receiver writes a reply in binary mode, its data the
		// response body: over HTTP this reply is one larger than the
		// ingress takes, and fails as httpEndpoint.send has it fail.
		return outcome{code: code, replyTooLarge: true, reason: fmt.Sprintf("reply larger than %d bytes", e.maxBody)}
	}
	// A reply crosses the HTTP binding on a cluster; its copy here keeps
	// the handler from changing it after it is queued.
	r := reply.Clone()
	return outcome{code: code, reply: &r}
}

// statusOf is the HTTP status and body sdk-go's HTTP receiver
// (protocol/http.Protocol.ServeHTTP) answers for a handler's result.
func statusOf(res protocol.Result) (int, []byte) {
	if res == nil {
		return http.StatusOK, nil
	}
	var r *cehttp.Result
	if protocol.ResultAs(res, &r) {
		code := http.StatusOK
		if r.StatusCode > 100 && r.StatusCode < 600 {
			code = r.StatusCode
		}
		return code, []byte(fmt.Errorf(r.Format, r.Args...).Error())
	}
	if protocol.IsACK(res) {
		return http.StatusOK, nil
	}
	var ve ceevent.ValidationError
	if errors.As(res, &ve) {
		return http.StatusBadRequest, []byte(ve.Error())
	}
	if errors.Is(res, binding.ErrUnknownEncoding) {
		return http.StatusUnsupportedMediaType, nil
	}
	return http.StatusInternalServerError, nil
}
