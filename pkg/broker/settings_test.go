package broker

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestSettings_Flags(t *testing.T) {
	var s Settings
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s.RegisterFlags(fs)
	err := fs.Parse([]string{"--subscriber", "a=http://127.0.0.1:1/a", "--subscriber", "b=http://127.0.0.1:1/b,c=https://c.test/",
		"--queue-size", "5", "--workers", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := s.Subscribers.String(); got != "a=http://127.0.0.1:1/a,b=http://127.0.0.1:1/b,c=https://c.test/" {
		t.Errorf("subscribers %s", got)
	}
	o := s.Options()
	if o.QueueSize != 5 || o.Workers != 2 || o.DeliveryTimeout != DefaultDeliveryTimeout || len(o.Subscribers) != 3 {
		t.Errorf("options %+v", o)
	}
	cfg, err := s.Load()
	if err != nil || cfg.Broker != "dovewarden" {
		t.Fatalf("embedded manifests: %v %v", cfg, err)
	}
	for _, bad := range []string{"noequals", "=http://x", "a=relative/path", "a=ftp://x"} {
		if err := fs.Set("subscriber", bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("Set(%q): %v", bad, err)
		}
	}
}
