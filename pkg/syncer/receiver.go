package syncer

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// HeaderOutcome tells a human with curl why a 202 carries no event.
const HeaderOutcome = "X-Dovewarden-Outcome"

// Mount registers the receiver at /.
func (h *Handler) Mount(mux *http.ServeMux) { mux.Handle("/", h) }

// ServeHTTP receives one CloudEvent in binary or structured mode and
// answers as Handle decides: 200 with the result event, 202 with an empty
// body when there is nothing to reply (a 2xx body that is not a
// CloudEvent would make the Broker retry), 4xx/5xx with the reason.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		h.httpReject(w, http.StatusNotFound, rejectPath, "post CloudEvents to /")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.httpReject(w, http.StatusMethodNotAllowed, rejectMethod, "method "+r.Method+" not allowed: POST a CloudEvent")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, h.opts.MaxBody)
	msg := cehttp.NewMessageFromHttpRequest(r)
	switch msg.ReadEncoding() {
	case binding.EncodingBinary, binding.EncodingStructured:
	case binding.EncodingBatch:
		h.httpReject(w, http.StatusBadRequest, rejectEncoding, "batched CloudEvents are not supported: send one event per request")
		return
	default:
		h.httpReject(w, http.StatusBadRequest, rejectEncoding,
			"not a CloudEvent: send binary mode (ce-* headers) or structured mode (Content-Type: application/cloudevents+json)")
		return
	}
	ev, err := binding.ToEvent(r.Context(), msg)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.httpReject(w, http.StatusRequestEntityTooLarge, rejectTooLarge, fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
			return
		}
		h.httpReject(w, http.StatusBadRequest, rejectInvalid, "unreadable CloudEvent: "+err.Error())
		return
	}
	reply, err := h.Handle(r.Context(), *ev)
	if err != nil {
		code := http.StatusInternalServerError
		var res *cehttp.Result
		if errors.As(err, &res) {
			code = res.StatusCode
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprintln(w, resultMessage(err))
		return
	}
	if reply == nil {
		w.Header().Set(HeaderOutcome, "acknowledged")
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(reply), http.StatusOK, w); err != nil {
		h.log.Error("writing the reply event failed", "id", reply.ID(), "err", err)
	}
}

func (h *Handler) httpReject(w http.ResponseWriter, code int, reason, msg string) {
	h.m.rejected.WithLabelValues(reason).Inc()
	http.Error(w, msg, code)
}

// resultMessage is a Result's message without its "400: " prefix.
func resultMessage(err error) string {
	var res *cehttp.Result
	if errors.As(err, &res) {
		return fmt.Errorf(res.Format, res.Args...).Error()
	}
	return err.Error()
}
