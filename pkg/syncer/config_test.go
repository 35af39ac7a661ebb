package syncer

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoad_FromEnvironmentWithSecretFile(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), []string{"--lock-ttl=2s"}, env(map[string]string{
		"DOVEWARDEN_REDIS_URL":             "redis://127.0.0.1:6379/0",
		"DOVEWARDEN_DOVEADM_URL":           "http://mail-a:8080/doveadm/v1",
		"DOVEWARDEN_DOVEADM_PASSWORD_FILE": pw,
		"DOVEWARDEN_DESTINATION":           "tcp:mail-b:12345",
		"DOVEWARDEN_LOCK_TTL":              "9s", // the flag wins
		"K_SINK":                           "http://broker.test/ns/default",
		"PORT":                             "9090",
	}))
	if err != nil {
		t.Fatal(err)
	}
	d := c.HostMap().Default
	if d.Password != "s3cret" || d.URL != "http://mail-a:8080/doveadm/v1" || c.LockTTL != 2*time.Second ||
		c.ResultsSink != "http://broker.test/ns/default" || c.Server.Listen != ":9090" || c.Transport != "doveadm-http" {
		t.Errorf("config %+v", c)
	}
}

func TestLoad_HostMapFile(t *testing.T) {
	dir := t.TempDir()
	hm := filepath.Join(dir, "hosts.json")
	os.WriteFile(hm, []byte(`{"mail-b": {"url": "http://mail-b:8080/doveadm/v1", "destination": "tcp:mail-a:12345", "password_env": "B_PW"}}`), 0o600)
	c, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL": "redis://r:6379", "DOVEWARDEN_DOVEADM_URL": "http://mail-a:8080/doveadm/v1",
		"DOVEWARDEN_DOVEADM_PASSWORD": "pa", "DOVEWARDEN_DESTINATION": "tcp:mail-b:12345",
		"DOVEWARDEN_HOST_MAP_FILE": hm, "B_PW": "pb",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.HostMap().Resolve("mail-b"); b.Password != "pb" || b.Destination != "tcp:mail-a:12345" {
		t.Errorf("mail-b %+v", b)
	}
}

// TestLoad_HostMapFileTooLarge: a host-map-file that names the wrong file
// (a log, a device such as /dev/zero, which never ends) stops the start
// with an error naming the setting, after reading no more than the bound
// and a byte; it was read whole, and this one, a valid map and spaces,
// was taken.
func TestLoad_HostMapFileTooLarge(t *testing.T) {
	hm := filepath.Join(t.TempDir(), "hosts.json")
	data := `{"mail-b": {"url": "http://mail-b:8080/doveadm/v1", "destination": "tcp:mail-a:12345"}}`
	if err := os.WriteFile(hm, []byte(data+strings.Repeat(" ", doveadm.MaxHostMapFile+1-len(data))), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL": "redis://r:6379", "DOVEWARDEN_DOVEADM_URL": "http://mail-a:8080/doveadm/v1",
		"DOVEWARDEN_DOVEADM_PASSWORD": "pa", "DOVEWARDEN_DESTINATION": "tcp:mail-b:12345",
		"DOVEWARDEN_HOST_MAP_FILE": hm,
	}))
	if err == nil || !strings.HasPrefix(err.Error(), "host-map-file: "+hm+": larger than") {
		t.Errorf("a host map of %d bytes: %v; want an error naming host-map-file and the file", doveadm.MaxHostMapFile+1, err)
	}
}

func TestLoad_ErrorsNameTheSetting(t *testing.T) {
	_, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_TRANSPORT":       "ssh",
		"DOVEWARDEN_REQUEST_TIMEOUT": "10m",
		"DOVEWARDEN_LOCK_TTL":        "10ms",
		"DOVEWARDEN_MAX_ATTEMPTS":    "0",
		"DOVEWARDEN_RESULTS_SINK":    "not a url",
		// Every result event would be invalid, and none sent.
		"DOVEWARDEN_SOURCE": "dovewarden/%zz",
		"K_CA_CERTS":        "not a certificate",
		// Dovecot copies a mailbox named by its special use all the same.
		"DOVEWARDEN_DSYNC_EXCLUDE_MAILBOXES": `Spam, \Junk`,
	}))
	for _, want := range []string{"redis-url: not set", "transport \"ssh\"", "request-timeout", "lock-ttl", "max-attempts", "results-sink", "source \"dovewarden/%zz\"", "K_CA_CERTS",
		`dsync-exclude-mailboxes: "\\Junk": dsync does not leave out mailboxes by special-use flag`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	// With doveadm-http, dsync would take no lock of its own.
	for _, v := range []string{"0s", "500ms"} {
		_, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{"DOVEWARDEN_DSYNC_LOCK_TIMEOUT": v}))
		if err == nil || !strings.Contains(err.Error(), "dsync-lock-timeout "+v+": want at least 1s") {
			t.Errorf("dsync-lock-timeout %s: %v", v, err)
		}
	}
	// A dsync bound that would cut off a dsync still waiting for its lock.
	_, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_DSYNC_TIMEOUT": "20s", "DOVEWARDEN_DSYNC_LOCK_TIMEOUT": "20s"}))
	if err == nil || !strings.Contains(err.Error(), "dsync-lock-timeout 20s: must be below dsync-timeout 20s") {
		t.Errorf("dsync-lock-timeout as long as dsync-timeout: %v", err)
	}
	// dsync is given the lock timeout in whole seconds, rounded up (-l
	// 20 for 19.5s): as long as the dsync bound.
	_, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_DSYNC_TIMEOUT": "20s", "DOVEWARDEN_DSYNC_LOCK_TIMEOUT": "19.5s"}))
	if err == nil || !strings.Contains(err.Error(), "dsync-lock-timeout 19.5s: must be below dsync-timeout 20s") {
		t.Errorf("dsync-lock-timeout of 19.5s under a dsync-timeout of 20s: %v", err)
	}
	for _, lock := range []string{"19s", "18.5s"} {
		if _, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
			"DOVEWARDEN_DSYNC_TIMEOUT": "20s", "DOVEWARDEN_DSYNC_LOCK_TIMEOUT": lock})); err != nil && strings.Contains(err.Error(), "must be below dsync-timeout") {
			t.Errorf("dsync-lock-timeout %s under a dsync-timeout of 20s: %v", lock, err)
		}
	}
	_, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL": "redis://:hunter2@r:6379", "DOVEWARDEN_DOVEADM_URL": "http://a/doveadm/v1",
	}))
	if err == nil || !strings.Contains(err.Error(), "no doveadm password") || !strings.Contains(err.Error(), "no destination") {
		t.Errorf("missing doveadm settings: %v", err)
	}
	_, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL": "http://:hunter2@r:6379", "DOVEWARDEN_TRANSPORT": "doveadm-exec", "DOVEWARDEN_DESTINATION": "tcp:b:1",
	}))
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "redis-url") {
		t.Errorf("bad redis url: %v", err)
	}
	// A missing doveadm binary is one problem among the others, named with
	// them, not the only one named (nor one that hides them on a machine
	// without Dovecot).
	_, err = Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(map[string]string{
		"DOVEWARDEN_REDIS_URL": "http://r:6379", "DOVEWARDEN_TRANSPORT": "doveadm-exec", "DOVEWARDEN_DESTINATION": "tcp:b:1",
		"DOVEWARDEN_DOVEADM_BIN": "no-such-doveadm-binary",
	}))
	for _, want := range []string{"doveadm-bin:", "redis-url"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing binary and bad redis url: %v, want %q in it", err, want)
		}
	}
}

// doveadm-ca-file: read at start, and refused where no doveadm URL is
// https, where it could only be a mistake.
func TestLoad_DoveadmCAFile(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	hm := filepath.Join(dir, "hosts.json")
	os.WriteFile(hm, []byte(`{"mail-b": {"url": "HTTPS://mail-b:8081/doveadm/v1", "destination": "tcps:mail-a:12345"}}`), 0o600)
	base := map[string]string{"DOVEWARDEN_REDIS_URL": "redis://r:6379", "DOVEWARDEN_DOVEADM_URL": "http://mail-a:8081/doveadm/v1",
		"DOVEWARDEN_DOVEADM_PASSWORD": "pa", "DOVEWARDEN_DESTINATION": "tcp:mail-b:12345"}
	load := func(extra map[string]string) (Config, error) {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(m))
	}
	c, err := load(map[string]string{"DOVEWARDEN_HOST_MAP_FILE": hm, "DOVEWARDEN_DOVEADM_CA_FILE": ca.File})
	if err != nil || c.DoveadmCAs() == nil {
		t.Fatalf("an https host in the host map: %v, pool %v", err, c.DoveadmCAs())
	}
	if c, err := load(nil); err != nil || c.DoveadmCAs() != nil {
		t.Fatalf("without the setting: %v, pool %v (want nil: the system's)", err, c.DoveadmCAs())
	}
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	for _, tt := range []struct {
		name  string
		extra map[string]string
		want  string
	}{
		{"no https URL", map[string]string{"DOVEWARDEN_DOVEADM_CA_FILE": ca.File}, "doveadm-ca-file: set, but no doveadm URL is https"},
		{"doveadm-exec", map[string]string{"DOVEWARDEN_DOVEADM_URL": "https://mail-a:8081/doveadm/v1", "DOVEWARDEN_DOVEADM_CA_FILE": ca.File, "DOVEWARDEN_TRANSPORT": "doveadm-exec"}, "doveadm-ca-file: only with transport doveadm-http"},
		{"a missing file", map[string]string{"DOVEWARDEN_DOVEADM_URL": "https://mail-a:8081/doveadm/v1", "DOVEWARDEN_DOVEADM_CA_FILE": filepath.Join(dir, "gone.pem")}, "doveadm-ca-file: open"},
		{"no certificate in it", map[string]string{"DOVEWARDEN_DOVEADM_URL": "https://mail-a:8081/doveadm/v1", "DOVEWARDEN_DOVEADM_CA_FILE": notPEM}, "doveadm-ca-file " + notPEM + ": no PEM certificate"},
	} {
		if _, err := load(tt.extra); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

// doveadm-exec: the binary is checked at start. The configs doveadm is
// given with -c are not: a wrapper (sudo, a container's exec) may read
// what this process cannot; doveadm's own answer classifies them
// (pkg/doveadm, KindConfig).
func TestLoad_DoveadmExecChecksTheBinary(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "dovecot.conf")
	if err := os.WriteFile(conf, []byte("# a config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "doveadm")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	hostMap := filepath.Join(dir, "hosts.json")
	if err := os.WriteFile(hostMap, []byte(`{"mail-b": {"destination": "tcp:mail-a:12345", "config": "`+filepath.Join(dir, "b.conf")+`"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"DOVEWARDEN_REDIS_URL": "redis://127.0.0.1:6379/0", "DOVEWARDEN_TRANSPORT": "doveadm-exec",
		"DOVEWARDEN_DESTINATION": "tcp:mail-b:12345", "DOVEWARDEN_DOVEADM_BIN": bin, "DOVEWARDEN_DOVEADM_CONFIG": conf}
	load := func(over map[string]string) error {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range over {
			m[k] = v
		}
		_, err := Load(flag.NewFlagSet("sync", flag.ContinueOnError), nil, env(m))
		return err
	}
	if err := load(nil); err != nil {
		t.Fatalf("a readable config and a binary: %v", err)
	}
	for _, over := range []map[string]string{{"DOVEWARDEN_DOVEADM_CONFIG": filepath.Join(dir, "only-doveadm-sees-it.conf")}, {"DOVEWARDEN_HOST_MAP_FILE": hostMap}} {
		if err := load(over); err != nil {
			t.Errorf("a config this process cannot open (%v): %v, want it left to doveadm", over, err)
		}
	}
	for _, c := range []struct {
		name string
		over map[string]string
		want []string
	}{
		{"missing binary", map[string]string{"DOVEWARDEN_DOVEADM_BIN": filepath.Join(dir, "no-doveadm")}, []string{"doveadm-bin:", "no-doveadm"}},
		{"binary not in PATH", map[string]string{"DOVEWARDEN_DOVEADM_BIN": "no-such-doveadm-binary"}, []string{"doveadm-bin:", "not found"}},
	} {
		err := load(c.over)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want %q", c.name, err, w)
			}
		}
	}
	// doveadm-http runs no doveadm here: neither is looked at.
	err := load(map[string]string{"DOVEWARDEN_TRANSPORT": "doveadm-http", "DOVEWARDEN_DOVEADM_URL": "http://mail-a:8081/doveadm/v1",
		"DOVEWARDEN_DOVEADM_PASSWORD": "pw", "DOVEWARDEN_DOVEADM_BIN": "no-such-doveadm-binary", "DOVEWARDEN_DOVEADM_CONFIG": ""})
	if err != nil {
		t.Errorf("doveadm-http: %v", err)
	}
}
