package broker

import (
	"net/http"
	"sort"
	"strings"
)

// HeaderNamespace is the header Knative's broker filter adds to every
// request to a Trigger's subscriber, naming the Trigger's namespace
// (knative.dev/eventing/pkg/apis.KnNamespaceHeader); the channel
// dispatcher adds it to a dead-letter sink's request too.
const HeaderNamespace = "Kn-Namespace"

// DefaultNamespace is the namespace of events that reach the broker with
// none: published in-process, or POSTed at "/" (Options.Namespace left
// empty).
const DefaultNamespace = "default"

// Bounds on the pass-through headers kept with one event, so a lane's
// memory stays bounded: at most MaxPassThroughValues header values,
// names and values together at most MaxPassThroughBytes. A header that
// does not fit whole is left out (the others are kept); Knative keeps
// them all.
const (
	MaxPassThroughValues = 32
	MaxPassThroughBytes  = 8 << 10
)

// Knative's allow-list (knative.dev/eventing/pkg/utils.PassThroughHeaders):
// these names, and names with these prefixes, compared in lower case.
// ce- headers are not among them: they are the event's attributes.
var (
	passThroughNames    = map[string]bool{"x-request-id": true, "retry-after": true}
	passThroughPrefixes = []string{"knative-", "x-b3-"}
)

// PassThroughHeaders selects the headers of a request that Knative's
// broker keeps with the event it carries (utils.PassThroughHeaders): its
// ingress keeps them from the request that brings an event in, its
// filter sends them on to the subscriber, and a reply keeps those of the
// subscriber's response. They are X-Request-Id, Retry-After and the names
// starting with Knative- or X-B3- (Zipkin B3 tracing), in any case.
// Unlike Knative's, the selection is bounded (MaxPassThroughValues,
// MaxPassThroughBytes): headers are taken by name in sorted order, each
// whole or not at all. A header whose name is not an HTTP token or whose
// value holds a control character other than tab is left out. It returns
// nil when none is kept.
func PassThroughHeaders(h http.Header) http.Header {
	var names []string
	for name := range h {
		if passesThrough(name) && validHeaderName(name) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	var out http.Header
	count, size := 0, 0
header:
	for _, name := range names {
		vs := h[name]
		n := 0
		for _, v := range vs {
			if headerCTL(v) >= 0 {
				continue header
			}
			n += len(name) + len(v)
		}
		if len(vs) == 0 || count+len(vs) > MaxPassThroughValues || size+n > MaxPassThroughBytes {
			continue
		}
		if out == nil {
			out = http.Header{}
		}
		out[name] = append([]string(nil), vs...)
		count += len(vs)
		size += n
	}
	return out
}

func passesThrough(name string) bool {
	lower := strings.ToLower(name)
	if passThroughNames[lower] {
		return true
	}
	for _, p := range passThroughPrefixes {
		if strings.HasPrefix(lower, p) {
			return true
		}
	}
	return false
}

// validHeaderName reports whether name is an HTTP token (RFC 9110), as a
// header name must be.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validNamespace reports whether ns can name a Kubernetes namespace (an
// RFC 1123 label: at most 63 lower-case letters, digits and '-', starting
// and ending with a letter or digit).
func validNamespace(ns string) bool {
	if ns == "" || len(ns) > 63 || ns[0] == '-' || ns[len(ns)-1] == '-' {
		return false
	}
	for i := 0; i < len(ns); i++ {
		if c := ns[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// outgoing is what a request to a subscriber or dead-letter sink carries
// besides the event: the pass-through headers and Kn-Namespace, as
// Knative's filter (send) and channel dispatcher set them.
func outgoing(pass http.Header, ns string) http.Header {
	h := make(http.Header, len(pass)+1)
	for k, v := range pass {
		h[k] = v
	}
	h.Set(HeaderNamespace, ns)
	return h
}
