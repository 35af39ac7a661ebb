package validate

// Differential fuzzing of the embedded broker against Knative's own code:
// whatever the embedded broker accepts must mean on it what it means on a
// cluster. The embedded broker may refuse more (it is stricter by design,
// pkg/broker/filter.go and duration.go say where), never decide otherwise.
//
//	(cd config/validate && GOWORK=off go test -run '^$' -fuzz FuzzDurationMatchesKnative -fuzztime 60s)
//	(cd config/validate && GOWORK=off go test -run '^$' -fuzz FuzzFilterMatchesKnative -fuzztime 60s)
//	(cd config/validate && GOWORK=off go test -run '^$' -fuzz FuzzCESQLMatchesKnative -fuzztime 60s)
//	(cd config/validate && GOWORK=off go test -run '^$' -fuzz FuzzNestedFiltersMatchKnative -fuzztime 60s)

import (
	"encoding/json"
	"testing"
	"testing/fstest"
	"time"

	cesqlparser "github.com/cloudevents/sdk-go/sql/v2/parser"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rickb777/date/period"
	"sigs.k8s.io/yaml"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/dovewarden/dovewarden-knative/pkg/broker"
)

// FuzzDurationMatchesKnative: a backoffDelay or timeout the embedded
// broker reads is read by Knative (rickb777/date/period, then Duration)
// as the same duration.
func FuzzDurationMatchesKnative(f *testing.F) {
	for _, s := range []string{
		"PT0.5S", "PT0,5S", "PT0.25S", "PT1S", "PT90S", "PT1M", "PT1.5M", "PT1H30M", "PT1M30.5S", "P1D", "P1W",
		"P1DT12H", "P1M", "P1Y", "P1Y2M3DT4H5M6S", "P0D", "PT0S", "PT2.75H", "P", "PT", "-PT1S", "PT1.S", "P1.5W",
		"PT9999999999999S", "P99999999Y", "PT1S1M", "P1H", "PT.5S", "P1DT", "PT0.05S",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ours, err := broker.ParseDuration(s)
		if err != nil {
			return
		}
		p, err := period.Parse(s)
		if err != nil {
			t.Fatalf("%q: embedded broker reads %v, Knative refuses it: %v", s, ours, err)
		}
		theirs, _ := p.Duration()
		if ours != theirs {
			t.Fatalf("%q: embedded broker %v, Knative %v", s, ours, theirs)
		}
	})
}

// fuzzAttrs are the attributes the filter fuzzer sets on its event and
// names in its filters: context attributes and extensions.
var fuzzAttrs = []string{"type", "source", "subject", "id", "dataschema", "priority", "partitionkey", "x"}

// fuzzEvent is a valid event with attr set to value where the SDK allows
// it; false when it does not (an invalid URI, an empty id, ...).
func fuzzEvent(attr, value string) (cloudevents.Event, bool) {
	ev := cloudevents.NewEvent()
	ev.SetID("e1")
	ev.SetType("org.dovewarden.mailbox.changed")
	ev.SetSource("mail-a.test")
	ev.SetTime(time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC))
	switch attr {
	case "type":
		ev.SetType(value)
	case "source":
		ev.SetSource(value)
	case "subject":
		ev.SetSubject(value)
	case "id":
		ev.SetID(value)
	case "dataschema":
		ev.SetDataSchema(value)
	default:
		ev.SetExtension(attr, value)
	}
	return ev, ev.Validate() == nil
}

// FuzzFilterMatchesKnative: one filter of each dialect (exact, prefix,
// suffix, not, attributes) on one attribute. When Knative's webhook
// accepts the Trigger and the embedded broker loads it, both decide the
// same for an event carrying the attribute with another fuzzed value, the
// filter's own value, and none of it.
func FuzzFilterMatchesKnative(f *testing.F) {
	f.Add(uint8(0), uint8(0), "org.dovewarden.mailbox.changed", "org.dovewarden.mailbox.changed")
	f.Add(uint8(1), uint8(0), "org.dovewarden.", "org.dovewarden.mailbox.changed")
	f.Add(uint8(2), uint8(1), ".test", "mail-a.test")
	f.Add(uint8(3), uint8(5), "high", "low")
	f.Add(uint8(4), uint8(5), "", "high")
	f.Add(uint8(4), uint8(2), "u1", "U1")
	f.Add(uint8(0), uint8(6), "u1", "")
	f.Add(uint8(1), uint8(7), "é", "éa")
	f.Add(uint8(2), uint8(4), "x", "http://a.test/x")
	f.Fuzz(func(t *testing.T, dialect, attr uint8, value, eventValue string) {
		name := fuzzAttrs[int(attr)%len(fuzzAttrs)]
		var spec map[string]any
		switch dialect % 5 {
		case 0:
			spec = map[string]any{"filters": []any{map[string]any{"exact": map[string]string{name: value}}}}
		case 1:
			spec = map[string]any{"filters": []any{map[string]any{"prefix": map[string]string{name: value}}}}
		case 2:
			spec = map[string]any{"filters": []any{map[string]any{"suffix": map[string]string{name: value}}}}
		case 3:
			spec = map[string]any{"filters": []any{map[string]any{"not": map[string]any{"exact": map[string]string{name: value}}}}}
		case 4:
			spec = map[string]any{"filter": map[string]any{"attributes": map[string]string{name: value}}}
		}
		compareOne(t, spec, name, []string{eventValue, value})
	})
}

// FuzzNestedFiltersMatchKnative: filters that nest all, any and not over
// exact, prefix and suffix, built from the fuzzer's bytes, decide as
// Knative's for events whose attributes take the fuzzed values.
func FuzzNestedFiltersMatchKnative(f *testing.F) {
	f.Add([]byte{0x13, 0x02, 0x21, 0x40, 0x05}, "high", "mail-a.test")
	f.Add([]byte{0x31, 0x12, 0x00, 0x25, 0x41, 0x03}, "low", "u1")
	f.Add([]byte{0x23, 0x33, 0x10, 0x01, 0x02, 0x14}, "", "org.dovewarden.mailbox.changed")
	f.Add([]byte{0x32, 0x31, 0x30, 0x04}, "h", "h")
	f.Fuzz(func(t *testing.T, prog []byte, a, b string) {
		values := []string{a, b, "high", "mail-a", ".test", "org.dovewarden."}
		pos := 0
		next := func() byte {
			if pos >= len(prog) {
				return 0
			}
			pos++
			return prog[pos-1]
		}
		var build func(depth int) map[string]any
		build = func(depth int) map[string]any {
			op := next()
			kind := (op >> 4) % 4
			if depth >= 3 {
				kind = 0
			}
			switch kind {
			case 1, 2: // all, any of two or three
				list := []any{build(depth + 1), build(depth + 1)}
				if op&1 == 1 {
					list = append(list, build(depth+1))
				}
				return map[string]any{[]string{"all", "any"}[kind-1]: list}
			case 3:
				return map[string]any{"not": build(depth + 1)}
			}
			dialect := []string{"exact", "prefix", "suffix"}[int(op&0x0f)%3]
			attr := fuzzAttrs[int(next())%len(fuzzAttrs)]
			return map[string]any{dialect: map[string]string{attr: values[int(next())%len(values)]}}
		}
		spec := map[string]any{"filters": []any{build(0)}}
		for _, attr := range []string{"priority", "source", "subject", "type"} {
			compareOne(t, spec, attr, []string{a, b, ""})
		}
	})
}

// FuzzCESQLMatchesKnative: a CESQL filter the embedded broker loads
// decides as Knative's for events with and without the attribute it is
// given.
func FuzzCESQLMatchesKnative(f *testing.F) {
	for _, s := range []string{
		"type = 'org.dovewarden.mailbox.changed' AND priority = 'high'",
		"source LIKE '%.test' OR subject LIKE 'admin%'",
		"EXISTS priority AND NOT EXISTS partitionkey",
		"priority IN ('high', 'urgent')",
		"LOWER(type) = 'org.dovewarden.mailbox.changed'",
		"INT(priority) > 2",
		"priority",
		"TRUE",
		"x = 1",
		"CONCAT(type, source) LIKE '%test'",
		"ABS(INT(x)) = 5",
		"SUBSTRING(subject, 2) = '1'",
		"1 / 0 = 1",
	} {
		f.Add(s, "high")
	}
	f.Fuzz(func(t *testing.T, expr, value string) {
		spec := map[string]any{"filters": []any{map[string]any{"cesql": expr}}}
		for _, name := range []string{"priority", "subject", "x"} {
			compareOne(t, spec, name, []string{value, "1", ""})
		}
	})
}

// compareOne builds the Trigger spec both ways and, when both accept it,
// compares their decisions for events with attr set to each of values (an
// empty value: not set at all).
func compareOne(t *testing.T, spec map[string]any, attr string, values []string) {
	t.Helper()
	spec["broker"] = "dovewarden"
	spec["subscriber"] = map[string]any{"uri": "http://sub.test/"}
	doc, err := json.Marshal(map[string]any{
		"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
		"metadata": map[string]any{"name": "t", "namespace": "dovewarden"}, "spec": spec,
	})
	if err != nil {
		return // not representable (invalid UTF-8 is replaced, not refused)
	}
	var tr eventingv1.Trigger
	if err := yaml.UnmarshalStrict(doc, &tr); err != nil {
		return
	}
	ctx := webhookContext(t)
	tr.SetDefaults(ctx)
	if fe := tr.Validate(ctx); fe != nil {
		return // Knative refuses it: nothing to compare
	}
	cfg, err := broker.Load(fstest.MapFS{"t.yaml": {Data: append([]byte("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: dovewarden\n---\n"), doc...)}})
	if err != nil {
		return // the embedded broker refuses more than Knative, on purpose
	}
	theirs := triggerFilter(&tr)
	for _, v := range values {
		ev, ok := fuzzEvent(attr, v)
		if v == "" {
			ev, ok = fuzzEvent("x", "-")
			if attr == "x" {
				ev, ok = fuzzEvent("subject", "-")
			}
		}
		if !ok {
			continue
		}
		k, panicked := knativeDecides(theirs, ev)
		if panicked {
			// Knative's CESQL filter asserts a boolean result: an
			// expression the embedded broker loads must never give it
			// another. A panic inside the CESQL library (same code on
			// both) is the library's.
			if expr, ok := cesqlOf(spec); !ok || !cesqlPanics(expr, ev) {
				t.Fatalf("Trigger %s, event with %s=%q: Knative's filter panics; the embedded broker should refuse the Trigger", doc, attr, v)
			}
			continue
		}
		if o := cfg.Triggers[0].Filter.Match(ev); o != k {
			t.Fatalf("Trigger %s, event with %s=%q: embedded broker %v, Knative %v", doc, attr, v, o, k)
		}
	}
}

// knativeDecides is knativePasses, telling a panic apart.
func knativeDecides(f eventfilter.Filter, ev cloudevents.Event) (pass, panicked bool) {
	defer func() {
		if recover() != nil {
			pass, panicked = false, true
		}
	}()
	return knativePasses(f, ev), false
}

// cesqlPanics reports whether sdk-go's CESQL panics itself on ev.
func cesqlPanics(src string, ev cloudevents.Event) (panicked bool) {
	defer func() {
		if recover() != nil {
			panicked = true
		}
	}()
	expr, err := cesqlparser.Parse(src)
	if err == nil && expr != nil {
		_, _ = expr.Evaluate(ev)
	}
	return false
}

// cesqlOf is the expression of a spec whose one filter is CESQL.
func cesqlOf(spec map[string]any) (string, bool) {
	list, _ := spec["filters"].([]any)
	if len(list) != 1 {
		return "", false
	}
	f, _ := list[0].(map[string]any)
	expr, ok := f["cesql"].(string)
	return expr, ok
}
