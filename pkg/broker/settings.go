package broker

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	brokerconfig "github.com/dovewarden/dovewarden-knative/config/broker"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// Settings are the embedded broker's command-line settings, shared by every
// command that runs one (dovewarden broker, and the all-in-one local mode).
type Settings struct {
	// Triggers is a folder of Broker and Trigger manifests; empty means
	// the ones embedded from config/broker.
	Triggers string
	// Subscribers map subscriber and dead-letter sink ref names to URLs.
	Subscribers SubscriberMap
	// QueueSize, Workers and DeliveryTimeout are the Options of the same
	// names.
	QueueSize       int
	QueueBytes      int64
	Workers         int
	DeliveryTimeout time.Duration
	// SpoolFile is where the events the lanes hold at a stop are saved,
	// to be delivered after the next start; empty: they are lost.
	SpoolFile string

	// subscriberErrs are what the subscriber flag could not take, for
	// Validate to report.
	subscriberErrs []error
}

// RegisterFlags declares the settings on fs.
func (s *Settings) RegisterFlags(fs *flag.FlagSet) {
	if s.Subscribers == nil {
		s.Subscribers = SubscriberMap{}
	}
	fs.StringVar(&s.Triggers, "triggers", "", "folder of Broker and Trigger manifests (*.yaml) to route with (default: the embedded config/broker)")
	fs.Var(subscriberFlag{s}, "subscriber", "NAME=URL: send the events of Triggers whose subscriber (or dead-letter sink) ref is NAME to URL; repeatable, or comma-separated")
	fs.IntVar(&s.QueueSize, "queue-size", DefaultQueueSize, "events each Trigger's queue holds before publishing answers 503 (annotation dovewarden.org/queue-size overrides)")
	fs.Int64Var(&s.QueueBytes, "queue-bytes", DefaultQueueBytes, "bytes of events each Trigger's queue holds before publishing answers 503, whatever queue-size allows")
	fs.IntVar(&s.Workers, "workers", DefaultWorkers, "parallel deliveries per Trigger, and as many again to its dead-letter sink (annotation dovewarden.org/workers overrides)")
	fs.DurationVar(&s.DeliveryTimeout, "delivery-timeout", DefaultDeliveryTimeout, "time allowed for one delivery attempt when a Trigger's delivery sets no timeout")
	fs.StringVar(&s.SpoolFile, "spool-file", "", "file where the events the lanes hold at a stop are saved and from which they are delivered after the next start (default: none, they are lost)")
}

// Validate checks the settings; errors name the setting.
func (s *Settings) Validate() error {
	errs := append([]error(nil), s.subscriberErrs...)
	if s.Triggers != "" {
		if fi, err := os.Stat(s.Triggers); err != nil || !fi.IsDir() {
			errs = append(errs, fmt.Errorf("triggers %q: not a folder", s.Triggers))
		}
	}
	if s.QueueSize < 1 || s.QueueSize > MaxQueueSize {
		errs = append(errs, fmt.Errorf("queue-size %d: want 1 to %d", s.QueueSize, MaxQueueSize))
	}
	if s.QueueBytes < 1<<20 || s.QueueBytes > 64<<30 {
		errs = append(errs, fmt.Errorf("queue-bytes %d: want 1 MiB to 64 GiB (1048576 to 68719476736)", s.QueueBytes))
	}
	if s.Workers < 1 || s.Workers > MaxWorkers {
		errs = append(errs, fmt.Errorf("workers %d: want 1 to %d", s.Workers, MaxWorkers))
	}
	if s.DeliveryTimeout < time.Second {
		// Below it every delivery to a sync function, which runs a dsync
		// before it answers, is cut off and retried, then dead-lettered.
		errs = append(errs, fmt.Errorf("delivery-timeout %s: want at least 1s: a subscriber that runs a dsync answers later, and each delivery would be cut off and retried", s.DeliveryTimeout))
	}
	if s.SpoolFile != "" {
		if err := checkSpoolFolder(s.SpoolFile); err != nil {
			errs = append(errs, fmt.Errorf("spool-file %q: %w", s.SpoolFile, err))
		}
	}
	return errors.Join(errs...)
}

// Load reads the manifests: the Triggers folder, else the embedded ones.
func (s *Settings) Load() (*Config, error) {
	if s.Triggers == "" {
		cfg, err := Load(brokerconfig.FS)
		if err != nil {
			return nil, fmt.Errorf("embedded manifests: %w", err)
		}
		return cfg, nil
	}
	cfg, err := Load(os.DirFS(s.Triggers))
	if err != nil {
		return nil, fmt.Errorf("triggers %s: %w", s.Triggers, err)
	}
	return cfg, nil
}

// Options returns the broker Options the settings give; the caller adds
// handlers, logger and registerer.
func (s *Settings) Options() Options {
	return Options{
		Subscribers: s.Subscribers, QueueSize: s.QueueSize, QueueBytes: s.QueueBytes, Workers: s.Workers, DeliveryTimeout: s.DeliveryTimeout,
	}
}

// subscriberFlag is the subscriber flag. It takes every value and keeps
// what it cannot use for Validate to report, with any password hidden: the
// flag package's own error for a refused value quotes the value whole.
type subscriberFlag struct{ s *Settings }

func (f subscriberFlag) String() string {
	if f.s == nil {
		return ""
	}
	return f.s.Subscribers.String()
}

func (f subscriberFlag) Set(v string) error {
	if err := f.s.Subscribers.Set(v); err != nil {
		f.s.subscriberErrs = append(f.s.subscriberErrs, fmt.Errorf("subscriber %w", err))
	}
	return nil
}

// subscriberName is what a subscriber ref's name may be (a Kubernetes
// object name, in any case).
var subscriberName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)

// SubscriberMap is the repeatable NAME=URL flag.
type SubscriberMap map[string]string

// String lists the mappings, sorted.
func (m SubscriberMap) String() string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// Set adds NAME=URL mappings; several may be given comma-separated (so
// that one environment variable can hold them all). Its errors show no
// password.
//
// A password may hold ',' and '=' (both allowed unescaped in a URL's user
// information and query), so a piece the comma split made, or what comes
// before a '=' that is not a name, may be part of a password: neither is
// quoted.
func (m SubscriberMap) Set(v string) error {
	pairs := strings.Split(v, ",")
	for i, pair := range pairs {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		name, u, ok := strings.Cut(pair, "=")
		if !ok {
			if len(pairs) == 1 {
				return fmt.Errorf("%q: want NAME=URL", config.RedactURL(pair))
			}
			return fmt.Errorf("item %d of %d (comma-separated) has no '=': want NAME=URL (a ',' in a password must be escaped as %%2C)", i+1, len(pairs))
		}
		if name == "" {
			return fmt.Errorf("=%q: want NAME=URL, the name is empty", config.RedactURL(u))
		}
		if !subscriberName.MatchString(name) {
			return fmt.Errorf("item %d: the name before '=' is not a Kubernetes name: want NAME=URL (a '=' in a password must be escaped as %%3D)", i+1)
		}
		if !isAbsHTTP(u) {
			return fmt.Errorf("%s=%q: want an absolute http or https URL", name, config.RedactURL(u))
		}
		m[name] = u
	}
	return nil
}

// checkSpoolFolder makes sure the spool file can be written when the
// broker stops, not only found out then: its folder takes a new file.
func checkSpoolFolder(path string) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("its folder does not take a new file: %w", err)
	}
	f.Close()
	return os.Remove(f.Name())
}
