package broker

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	day := 24 * time.Hour
	for in, want := range map[string]time.Duration{
		"PT0.5S":    500 * time.Millisecond,
		"PT0,5S":    500 * time.Millisecond,
		"PT0.2S":    200 * time.Millisecond,
		"PT0.25S":   200 * time.Millisecond, // Knative keeps one decimal digit
		"PT1S":      time.Second,
		"PT5S":      5 * time.Second,
		"PT1M":      time.Minute,
		"PT1.5M":    90 * time.Second,
		"PT1H":      time.Hour,
		"PT1H30M":   90 * time.Minute,
		"PT1M30.5S": 90*time.Second + 500*time.Millisecond,
		"PT0S":      0,
		"P1D":       day,
		"P1W":       7 * day,
		"P1DT12H":   36 * time.Hour,
		"P1M":       2629746 * time.Second, // a twelfth of 365.2425 days
		"P1Y":       31556952 * time.Second,
		"P1Y2M3DT4H5M6S": 31556952*time.Second + 2*2629746*time.Second + 3*day +
			4*time.Hour + 5*time.Minute + 6*time.Second,
		"P1000D": 1000 * day,
		// Knative's parser folds a fraction of a year or month into
		// 30-day months and days when another component follows.
		"P0.1MT1S": 72*time.Hour + time.Second,
		"P0,1YT1M": 874*time.Hour + 30*time.Minute + 6*time.Second,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestParseDuration_Rejects(t *testing.T) {
	for _, in := range []string{
		"", "P", "PT", "0.5S", "T0.5S", "PT0.5", "-PT1S", "+PT1S", "PT-1S", "pt1s", "PT1s",
		"PT.5S", "PT1.S", "PT1.2.3S", "PT1S1M", "P1D1Y", "P1H", "PT1D", "P1DT", "PT1M1M",
		"500ms", "PT99999999999999999999S", "P1YT", "PTS", "P1.5.5D",
		"P0m", "P1m", "PT1m", "PT287000000S", "PT99999H", "P1001D", "P3Y", // Knative reads these inexactly or close to it
	} {
		if d, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, d)
		}
	}
}
