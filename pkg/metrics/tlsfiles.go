package metrics

import "github.com/prometheus/client_golang/prometheus"

// TLSFileLoadFailing is 1 while a TLS file that a role reads again as it
// changes does not load, by setting.
const TLSFileLoadFailing = "tls_file_load_failing"

// TLSFileChecks reads TLS files again and says, for each one set, by its
// setting, whether it does not load now.
type TLSFileChecks func() map[string]bool

// NewTLSFilesCollector returns the collector of
// dovewarden_tls_file_load_failing: for each file the checks name, 1
// while it does not load (the one loaded before is still used: the CAs
// of redis-ca-file and doveadm-ca-file, the client certificate of
// redis-cert-file), 0 while it loads. The files are read at each scrape,
// so that a renewal that does not load shows before the old file expires
// or a server's certificate changes, without waiting for a connection.
func NewTLSFilesCollector(checks ...TLSFileChecks) prometheus.Collector {
	return &tlsFiles{checks: checks, desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", TLSFileLoadFailing),
		"1 while a TLS file read again as it changes (redis-cert-file with redis-key-file, redis-ca-file, doveadm-ca-file) does not load, so that the one loaded before is still used; 0 while it loads. Read at each scrape.",
		[]string{"setting"}, nil)}
}

type tlsFiles struct {
	checks []TLSFileChecks
	desc   *prometheus.Desc
}

func (c *tlsFiles) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *tlsFiles) Collect(ch chan<- prometheus.Metric) {
	for _, check := range c.checks {
		for setting, failing := range check() {
			v := 0.0
			if failing {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, setting)
		}
	}
}
