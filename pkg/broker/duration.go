package broker

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/rickb777/date/period"
)

// Nanoseconds per tenth of each ISO-8601 designator, as Knative computes
// them (knative.dev/eventing uses github.com/rickb777/date/period): a year
// is 365.2425 days, a month a twelfth of that, and every component keeps
// one decimal digit. Only the bound and the overflow check use them.
var isoTenth = map[byte]int64{
	'Y': 3155695200000000, // 31556952 s / 10
	'm': 262974600000000,  // month: 2629746 s / 10
	'W': 60480000000000,   // 7 days / 10
	'D': 8640000000000,    // 1 day / 10
	'H': 360000000000,     // 1 h / 10
	'M': 6000000000,       // 1 min / 10
	'S': 100000000,        // 1 s / 10
}

// ParseDuration parses an ISO-8601 duration such as PT0.5S, PT1M, P1D or
// P1DT12H, as Knative reads a Trigger's backoffDelay and timeout: years
// are 365.2425 days, months a twelfth of that, weeks 7 days, and each
// component keeps one decimal digit (PT0.25S is 200ms on a cluster, so it
// is here too). It is stricter than Knative's parser in what it accepts:
// designators in ISO order, digits before every designator, no sign (a
// negative delay means nothing), at least one component after P and
// after T, and at most 1000 days.
//
// The value is the one Knative's own parser gives (rickb777/date/period,
// then Duration), which folds a fractional year or month into days when
// other components follow (P0.1MT1S is 72h0m1s there, not 73h2m55.6s):
// the grammar and bounds are checked here, the arithmetic is Knative's.
func ParseDuration(s string) (time.Duration, error) {
	if err := checkISO(s); err != nil {
		return 0, fmt.Errorf("ISO-8601 duration %q: %w", s, err)
	}
	p, err := period.Parse(s)
	if err != nil {
		return 0, fmt.Errorf("ISO-8601 duration %q: Knative's parser refuses it: %w", s, err)
	}
	d, _ := p.Duration()
	if d < 0 {
		return 0, fmt.Errorf("ISO-8601 duration %q: Knative's parser reads it as negative", s)
	}
	return d, nil
}

// checkISO checks the grammar and the bound; the value is Knative's.
func checkISO(s string) error {
	if !strings.HasPrefix(s, "P") {
		return errors.New("want P, then components such as 1D or T0.5S (e.g. PT0.5S, PT1M, P1D)")
	}
	rest := s[1:]
	datePart, timePart, hasT := strings.Cut(rest, "T")
	if hasT && timePart == "" {
		return errors.New("no component after T")
	}
	if !hasT && datePart == "" {
		return errors.New("no component after P")
	}
	// The date part's M is months, the time part's minutes.
	total, err := sumComponents(datePart, "YmWD", true, 0)
	if err != nil {
		return err
	}
	if hasT {
		if total, err = sumComponents(timePart, "HMS", false, total); err != nil {
			return err
		}
	}
	if total > maxDuration {
		return errors.New("longer than P1000D: Knative reads much longer durations inexactly")
	}
	return nil
}

// maxDuration bounds what ParseDuration accepts. Knative's parser keeps
// each component in 16-bit tenths and folds a larger one into bigger
// units, days into months and years of average length: PT99999H is
// 99996h57m36s there. Below this bound nothing is folded that far.
const maxDuration = int64(1000 * 24 * time.Hour)

// sumComponents reads "<number><designator>" pairs from part, with
// designators in the order of order (months, the date part's M, spelled
// 'm'), and adds their nanoseconds to total.
func sumComponents(part, order string, date bool, total int64) (int64, error) {
	for part != "" {
		i := strings.IndexFunc(part, func(r rune) bool { return (r < '0' || r > '9') && r != '.' && r != ',' })
		if i < 0 {
			return 0, fmt.Errorf("number %q has no designator", part)
		}
		num, des := part[:i], part[i]
		part = part[i+1:]
		key := des
		if des == 'M' && date {
			key = 'm'
		}
		pos := strings.IndexByte(order, key)
		if pos < 0 || des == 'm' { // 'm' is only the internal name of months
			return 0, fmt.Errorf("unexpected designator %q (want one of %s in this order)", des, designators(order))
		}
		order = order[pos+1:]
		tenths, err := parseTenths(num)
		if err != nil {
			return 0, fmt.Errorf("component %s%c: %w", num, des, err)
		}
		unit := isoTenth[key]
		if tenths > math.MaxInt64/unit || total > math.MaxInt64-tenths*unit {
			return 0, errors.New("too long")
		}
		total += tenths * unit
	}
	return total, nil
}

func designators(order string) string {
	return strings.ReplaceAll(order, "m", "M")
}

// parseTenths reads digits with an optional fraction ('.' or ',') and
// returns tenths, dropping further digits as Knative does.
func parseTenths(num string) (int64, error) {
	whole, frac, hasFrac := strings.Cut(strings.Replace(num, ",", ".", 1), ".")
	if whole == "" || (hasFrac && frac == "") || strings.ContainsAny(frac, ".,") {
		return 0, errors.New("want digits, optionally with one decimal fraction")
	}
	var n int64
	for _, c := range whole {
		if n > (math.MaxInt64-9)/10/10 {
			return 0, errors.New("too large")
		}
		n = n*10 + int64(c-'0')
	}
	n *= 10
	if hasFrac {
		n += int64(frac[0] - '0')
	}
	return n, nil
}
