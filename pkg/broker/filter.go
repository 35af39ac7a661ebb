package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"

	cesql "github.com/cloudevents/sdk-go/sql/v2"
	cesqlparser "github.com/cloudevents/sdk-go/sql/v2/parser"
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/dovewarden/dovewarden-knative/internal/lograte"
)

// Filter decides whether a Trigger wants an event, with the semantics of
// Knative's broker filter (knative.dev/eventing/pkg/eventfilter).
type Filter interface {
	Match(ev cloudevents.Event) bool
}

// rawFilter is one entry of a Trigger's spec.filters: exactly one dialect.
type rawFilter struct {
	Exact  map[string]string `json:"exact"`
	Prefix map[string]string `json:"prefix"`
	Suffix map[string]string `json:"suffix"`
	All    []rawFilter       `json:"all"`
	Any    []rawFilter       `json:"any"`
	Not    *rawFilter        `json:"not"`
	CESQL  string            `json:"cesql"`
}

// validAttributeName is Knative's rule for attribute names in filters.
var validAttributeName = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// compileFilters compiles spec.filters: every entry must pass, as
// Knative's CreateSubscriptionsAPIFilters does. Errors start with the
// entry's path ("[0].all[1].exact: ...").
//
// Knative's webhook accepts entries its filter code then silently skips
// (no dialect; an empty exact, prefix or suffix value; a CESQL expression
// that does not parse), which makes a Trigger match more than it says and
// makes "any" depend on the order Knative's optimiser keeps. Here those are
// errors, so every filter that loads means what it says on both.
func compileFilters(raws []rawFilter) (Filter, error) {
	list, err := compileList("", raws)
	if err != nil {
		return nil, err
	}
	return allOf(list), nil
}

func compileList(at string, raws []rawFilter) ([]Filter, error) {
	out := make([]Filter, 0, len(raws))
	for i, r := range raws {
		f, err := compileOne(fmt.Sprintf("%s[%d]", at, i), r)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func compileOne(at string, r rawFilter) (Filter, error) {
	var set []string
	for name, isSet := range map[string]bool{
		"exact": len(r.Exact) > 0, "prefix": len(r.Prefix) > 0, "suffix": len(r.Suffix) > 0,
		"all": len(r.All) > 0, "any": len(r.Any) > 0, "not": r.Not != nil, "cesql": r.CESQL != "",
	} {
		if isSet {
			set = append(set, name)
		}
	}
	sort.Strings(set)
	switch len(set) {
	case 0:
		return nil, fmt.Errorf("%s: no filter dialect set (want one of exact, prefix, suffix, all, any, not, cesql; Knative would skip this entry and match everything)", at)
	case 1:
	default:
		return nil, fmt.Errorf("%s: more than one dialect (%s): a filter entry has exactly one", at, strings.Join(set, ", "))
	}
	switch {
	case len(r.Exact) > 0:
		return compileStrings(at+".exact", r.Exact, func(have, want string) bool { return have == want })
	case len(r.Prefix) > 0:
		return compileStrings(at+".prefix", r.Prefix, strings.HasPrefix)
	case len(r.Suffix) > 0:
		return compileStrings(at+".suffix", r.Suffix, strings.HasSuffix)
	case len(r.All) > 0:
		list, err := compileList(at+".all", r.All)
		if err != nil {
			return nil, err
		}
		return allOf(list), nil
	case len(r.Any) > 0:
		list, err := compileList(at+".any", r.Any)
		if err != nil {
			return nil, err
		}
		return anyOf(list), nil
	case r.Not != nil:
		inner, err := compileOne(at+".not", *r.Not)
		if err != nil {
			return nil, err
		}
		return not{inner}, nil
	}
	return compileCESQL(at+".cesql", r.CESQL)
}

// stringsFilter is exact, prefix or suffix: every attribute must be there
// and its value, as a string, must pass cmp.
type stringsFilter struct {
	attrs map[string]string
	cmp   func(have, want string) bool
}

func compileStrings(at string, attrs map[string]string, cmp func(have, want string) bool) (Filter, error) {
	for k, v := range attrs {
		if !validAttributeName.MatchString(k) {
			return nil, fmt.Errorf("%s: attribute name %q: want lower-case letters and digits, starting with a letter", at, k)
		}
		if v == "" {
			return nil, fmt.Errorf("%s: attribute %s: empty value (Knative would skip this filter and match everything)", at, k)
		}
	}
	return stringsFilter{attrs: attrs, cmp: cmp}, nil
}

func (f stringsFilter) Match(ev cloudevents.Event) bool {
	for k, want := range f.attrs {
		v, ok := LookupAttribute(ev, k)
		if !ok {
			return false
		}
		s, isString := v.(string)
		if !isString {
			s = fmt.Sprintf("%v", v) // as Knative's exact, prefix and suffix filters do
		}
		if !f.cmp(s, want) {
			return false
		}
	}
	return true
}

// attributesFilter is the older spec.filter.attributes: exact match, where
// an empty value asks only that the attribute be there and not empty.
type attributesFilter map[string]string

func compileAttributes(attrs map[string]string) (Filter, error) {
	for k := range attrs {
		if !validAttributeName.MatchString(k) {
			return nil, fmt.Errorf("attribute name %q: want lower-case letters and digits, starting with a letter", k)
		}
	}
	return attributesFilter(attrs), nil
}

// Match follows knative.dev/eventing/pkg/eventfilter/attributes: a
// missing attribute fails; "" (TriggerAnyFilter) passes any non-empty
// value; otherwise the value must equal the string (a non-string value,
// which the HTTP binding never produces, does not).
func (f attributesFilter) Match(ev cloudevents.Event) bool {
	for k, want := range f {
		v, ok := LookupAttribute(ev, k)
		if !ok || (want == "" && v == "") {
			return false
		}
		if want != "" && v != any(want) {
			return false
		}
	}
	return true
}

type matchAll struct{}

func (matchAll) Match(cloudevents.Event) bool { return true }

type all []Filter

func allOf(fs []Filter) Filter {
	if len(fs) == 1 {
		return fs[0]
	}
	return all(fs)
}

func (a all) Match(ev cloudevents.Event) bool {
	for _, f := range a {
		if !f.Match(ev) {
			return false
		}
	}
	return true
}

type anyFilter []Filter

func anyOf(fs []Filter) Filter {
	if len(fs) == 1 {
		return fs[0]
	}
	return anyFilter(fs)
}

func (a anyFilter) Match(ev cloudevents.Event) bool {
	for _, f := range a {
		if f.Match(ev) {
			return true
		}
	}
	return false
}

type not struct{ f Filter }

func (n not) Match(ev cloudevents.Event) bool { return !n.f.Match(ev) }

type cesqlFilter struct {
	src  string
	expr cesql.Expression
	// failLogs bounds the lines of evaluations that fail: an
	// expression that fails does so on every event it sees. Each filter
	// (a Trigger's, as loaded) has its own, so Brokers and reloads do not
	// share one count and no expression is kept after its filter.
	failLogs *lograte.Limiter
}

// compileCESQL parses expr, recovering from the parser's panics on some bad
// input (Knative's webhook does the same and rejects the expression).
func compileCESQL(at, src string) (f Filter, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("%s: expression %q: the CESQL parser panicked: %v", at, src, r)
		}
	}()
	expr, err := cesqlparser.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("%s: expression %q: %w", at, src, err)
	}
	if expr == nil {
		return nil, fmt.Errorf("%s: expression %q: %w", at, src, errors.New("parses to nothing"))
	}
	// A non-boolean result would panic Knative's filter; refuse such an
	// expression. sdk-go does not expose an expression's type, so it is
	// evaluated on probe events that carry every attribute it may name.
	for _, ev := range probeEvents(src) {
		if v, err := evaluate(expr, ev); err == nil {
			if _, ok := v.(bool); !ok {
				return nil, fmt.Errorf("%s: expression %q: yields %T, not a boolean", at, src, v)
			}
		}
	}
	return &cesqlFilter{src: src, expr: expr, failLogs: lograte.PerMinute(5).Saying("per Trigger and expression")}, nil
}

// cesqlLiteral matches CESQL's string literals, so that their content is
// not taken for attribute names.
var cesqlLiteral = regexp.MustCompile(`'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"`)

// probeEvents are events with every context attribute set and, as
// extensions, every word of src outside string literals that can be an
// attribute name: a string, a number and a boolean's spelling each, so
// that a bare attribute, arithmetic and string functions all evaluate. An
// attribute set by the CloudEvents HTTP binding is always a string; only
// events made in-process carry other types. Words are taken in any case
// and lowercased, as sdk-go's CESQL reads identifiers (PRIORITY is the
// attribute priority).
func probeEvents(src string) []cloudevents.Event {
	words := strings.FieldsFunc(strings.ToLower(cesqlLiteral.ReplaceAllString(src, " ")), func(r rune) bool {
		return (r < 'a' || r > 'z') && (r < '0' || r > '9')
	})
	var out []cloudevents.Event
	for _, v := range []string{"probe", "1", "true"} {
		ev := cloudevents.NewEvent()
		ev.SetID(v)
		ev.SetSource(v)
		ev.SetType(v)
		ev.SetSubject(v)
		for _, w := range words {
			if validAttributeName.MatchString(w) {
				if _, isContext := LookupAttribute(ev, w); !isContext {
					ev.SetExtension(w, v)
				}
			}
		}
		out = append(out, ev)
	}
	return out
}

// errCESQLPanic marks an evaluation that panicked (a bug in the CESQL
// library, not a property of the event).
var errCESQLPanic = errors.New("CESQL evaluation panicked")

func evaluate(expr cesql.Expression, ev cloudevents.Event) (v any, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: %v", errCESQLPanic, r)
		}
	}()
	return expr.Evaluate(ev)
}

// Match is true only for a boolean true: an evaluation error (say, a
// missing attribute) is a non-match, as in Knative's CESQL filter.
func (f *cesqlFilter) Match(ev cloudevents.Event) bool {
	v, err := evaluate(f.expr, ev)
	if err != nil {
		if errors.Is(err, errCESQLPanic) {
			f.failLogs.Log(context.Background(), slog.Default(), slog.LevelWarn, "", "CESQL filter failed on an event; treated as no match",
				"expression", f.src, "id", ev.ID(), "err", err)
		}
		return false
	}
	b, ok := v.(bool)
	return ok && b
}

// LookupAttribute returns a CloudEvent attribute by name, as Knative's
// filters see it (knative.dev/eventing/pkg/eventfilter/attributes): the
// context attributes (time as RFC 3339, always "there"), then extensions.
func LookupAttribute(ev cloudevents.Event, name string) (any, bool) {
	switch name {
	case "specversion":
		return ev.SpecVersion(), true
	case "type":
		return ev.Type(), true
	case "source":
		return ev.Source(), true
	case "subject":
		return ev.Subject(), true
	case "id":
		return ev.ID(), true
	case "time":
		b, err := ev.Time().MarshalText()
		if err != nil {
			return nil, false
		}
		return string(b), true
	case "dataschema", "schemaurl":
		return ev.DataSchema(), true
	case "datacontenttype":
		return ev.DataContentType(), true
	case "datamediatype":
		return ev.DataMediaType(), true
	case "datacontentencoding":
		return ev.DeprecatedDataContentEncoding(), true
	}
	v, ok := ev.Extensions()[name]
	return v, ok
}
