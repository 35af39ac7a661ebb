package syncer

import (
	"context"
	"encoding/pem"
	"flag"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// sync serves dovewarden_tls_file_load_failing for each TLS file it reads
// again as it changes, read at the scrape: Redis's client certificate and
// CAs, and doveadm-ca-file. A file that does not load shows as 1 until it
// loads again.
func TestIntegrationRedis_TLSFilesFailingMetric(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real redis-server")
	}
	rs := redistest.StartWith(t, redistest.Options{TLS: true})
	a := doveadmtest.NewTLSServer(t, "mail-a", nil)
	caFile := filepath.Join(t.TempDir(), "doveadm-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL":        rs.URL(),
		"DOVEWARDEN_REDIS_CA_FILE":    rs.TLS.CA,
		"DOVEWARDEN_REDIS_CERT_FILE":  rs.TLS.Cert,
		"DOVEWARDEN_REDIS_KEY_FILE":   rs.TLS.Key,
		"DOVEWARDEN_DOVEADM_URL":      a.APIURL(),
		"DOVEWARDEN_DOVEADM_PASSWORD": doveadmtest.Password,
		"DOVEWARDEN_DOVEADM_CA_FILE":  caFile,
		"DOVEWARDEN_DESTINATION":      "tcp:mail-b:12345",
	}))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	_, closeFn, err := Build(context.Background(), cfg, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	failing := func(step string, want map[string]float64) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "dovewarden_tls_file_load_failing" {
				continue
			}
			for _, m := range mf.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: dovewarden_tls_file_load_failing %v, want %v", step, got, want)
		}
	}
	failing("at start", map[string]float64{"redis-cert-file": 0, "redis-ca-file": 0, "doveadm-ca-file": 0})
	if err := os.WriteFile(caFile, caPEM[:len(caPEM)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	failing("doveadm-ca-file half written", map[string]float64{"redis-cert-file": 0, "redis-ca-file": 0, "doveadm-ca-file": 1})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	failing("doveadm-ca-file written again", map[string]float64{"redis-cert-file": 0, "redis-ca-file": 0, "doveadm-ca-file": 0})
	if err := os.Remove(rs.TLS.Key); err != nil {
		t.Fatal(err)
	}
	failing("redis-key-file gone", map[string]float64{"redis-cert-file": 1, "redis-ca-file": 0, "doveadm-ca-file": 0})
}
