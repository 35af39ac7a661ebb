package broker

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// BackoffPolicy is Knative's delivery.backoffPolicy.
type BackoffPolicy string

// Backoff policies.
const (
	BackoffLinear      BackoffPolicy = "linear"
	BackoffExponential BackoffPolicy = "exponential"
)

// Delivery is Knative's delivery spec.
type Delivery struct {
	// Retry is how many retries follow the first attempt.
	Retry int
	// BackoffPolicy and BackoffDelay set the wait before each retry; as in
	// Knative, both must be set, else retries fire at once.
	BackoffPolicy BackoffPolicy
	BackoffDelay  time.Duration
	// Timeout bounds each attempt; 0 means the broker default.
	Timeout time.Duration
	// DeadLetterSink gets the event after the last failed attempt.
	DeadLetterSink *Destination
	// Structured sends to HTTP subscribers in structured mode (format:
	// json) instead of binary.
	Structured bool
}

// Backoff is the wait before retry n (1 for the first retry), exactly as
// Knative computes it (kncloudevents.RetryConfigFromDeliverySpec, called
// by go-retryablehttp with the zero-based retry index): exponential is
// delay × 2^(n-1), linear is delay × (n-1), so a linear policy's first
// retry fires at once. A wait longer than a time.Duration holds (some 292
// years) is that longest wait: Knative's product wraps round to a
// negative wait there, which fires at once.
func (d Delivery) Backoff(n int) time.Duration {
	if d.BackoffPolicy == "" || d.BackoffDelay <= 0 || n < 1 {
		return 0
	}
	var factor int64
	switch d.BackoffPolicy {
	case BackoffExponential:
		if n-1 >= 63 {
			return maxBackoff
		}
		factor = int64(1) << (n - 1)
	case BackoffLinear:
		factor = int64(n - 1)
	default:
		return 0
	}
	if factor > 0 && int64(d.BackoffDelay) > math.MaxInt64/factor {
		return maxBackoff
	}
	return d.BackoffDelay * time.Duration(factor)
}

// maxBackoff is the longest wait Backoff gives.
const maxBackoff = time.Duration(math.MaxInt64)

func parseDelivery(raw json.RawMessage) (*Delivery, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var rd rawDelivery
	if err := strict(raw, &rd); err != nil {
		return nil, err
	}
	d := &Delivery{}
	if rd.Retry != nil {
		if *rd.Retry < 0 {
			return nil, fmt.Errorf("retry %d: must not be negative", *rd.Retry)
		}
		d.Retry = int(*rd.Retry)
	}
	if rd.BackoffPolicy != nil {
		switch p := BackoffPolicy(*rd.BackoffPolicy); p {
		case BackoffLinear, BackoffExponential:
			d.BackoffPolicy = p
		default:
			return nil, fmt.Errorf("backoffPolicy %q: want linear or exponential", *rd.BackoffPolicy)
		}
	}
	var err error
	if rd.BackoffDelay != nil {
		if d.BackoffDelay, err = ParseDuration(*rd.BackoffDelay); err != nil {
			return nil, fmt.Errorf("backoffDelay: %w", err)
		}
	}
	if d.BackoffPolicy == "" || rd.BackoffDelay == nil {
		// Knative uses a backoff only when both are set.
		d.BackoffPolicy, d.BackoffDelay = "", 0
	}
	if rd.Timeout != nil {
		if d.Timeout, err = ParseDuration(*rd.Timeout); err != nil {
			return nil, fmt.Errorf("timeout: %w", err)
		}
		if d.Timeout == 0 {
			return nil, fmt.Errorf("timeout %q: must be more than zero", *rd.Timeout)
		}
	}
	if rd.Format != nil {
		switch *rd.Format {
		case "json":
			d.Structured = true
		case "binary":
		default:
			return nil, fmt.Errorf("format %q: want binary or json", *rd.Format)
		}
	}
	if rd.DeadLetterSink != nil {
		s := rd.DeadLetterSink
		dls, err := destination(s.Ref, s.URI, s.CACerts)
		if err != nil {
			return nil, fmt.Errorf("deadLetterSink: %w", err)
		}
		d.DeadLetterSink = &dls
	}
	return d, nil
}
