package config_test

import (
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/internal/safebuf"
	"github.com/dovewarden/dovewarden-knative/internal/testcert"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// newCA returns a new CA's certificate as PEM.
func newCA(t *testing.T) []byte {
	t.Helper()
	ca, err := testcert.NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca.PEM()
}

// What a CA file may hold at start: text around the blocks (a system
// bundle's comments), a block Go does not parse (left out, as
// AppendCertsFromPEM does), but at least one certificate, and no block
// cut short.
func TestLoadCAFile(t *testing.T) {
	a, b := newCA(t), newCA(t)
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")})
	for _, tt := range []struct {
		name    string
		content []byte
		want    string // error; empty: loads
	}{
		{"one CA", a, ""},
		{"a bundle with comments", []byte("# Issuer: A\n" + string(a) + "\n# Issuer: B\n" + string(b)), ""},
		{"a block Go does not parse, beside a CA", append(append([]byte{}, bad...), a...), ""},
		{"a key beside a CA", append(append([]byte{}, key...), a...), ""},
		{"empty", nil, "no PEM certificate in it"},
		{"a key only", key, "no PEM certificate in it"},
		{"only a block Go does not parse", bad, "no PEM certificate in it"},
		{"the second CA cut short", append(append([]byte{}, a...), b[:len(b)-40]...), "cut short"},
		{"the only CA cut short", a[:len(a)-40], "cut short"},
		{"cut in the second's BEGIN line", append(append([]byte{}, a...), "-----BEG"...), "cut short"},
		{"cut after the second's first dash", append(append([]byte{}, a...), "\n-"...), "cut short"},
		{"a comment after the last CA", append(append([]byte{}, a...), "# end of bundle\n"...), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := config.LoadCAFile("doveadm-ca-file", path)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("LoadCAFile: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "doveadm-ca-file")):
				t.Fatalf("LoadCAFile: %v, want an error naming doveadm-ca-file with %q", err, tt.want)
			}
		})
	}
	if _, err := config.LoadCAFile("redis-ca-file", filepath.Join(t.TempDir(), "gone.pem")); err == nil || !strings.HasPrefix(err.Error(), "redis-ca-file: open") {
		t.Errorf("a missing file: %v, want an error naming redis-ca-file", err)
	}
}

// TestLoadCAFile_TooLarge: a CA file setting that names the wrong file (a
// log, a device such as /dev/zero, which never ends) stops the start with
// an error naming the setting, after reading no more than the bound and a
// byte; it was read whole, at start and again at each connection, and
// this one, a CA and blank lines, was taken.
func TestLoadCAFile_TooLarge(t *testing.T) {
	a := newCA(t)
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, append(a, strings.Repeat("\n", config.MaxCAFile+1-len(a))...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.LoadCAFile("doveadm-ca-file", path); err == nil || !strings.HasPrefix(err.Error(), "doveadm-ca-file: "+path+": larger than") {
		t.Errorf("a CA file of %d bytes: %v; want an error naming doveadm-ca-file and the file", config.MaxCAFile+1, err)
	}
	if _, err := config.CAPool("tls-ca-file", path); err == nil || !strings.HasPrefix(err.Error(), "tls-ca-file: "+path+": larger than") {
		t.Errorf("CAPool of a CA file of %d bytes: %v; want an error naming tls-ca-file", config.MaxCAFile+1, err)
	}
	// Grown so after the start: the CAs loaded before stay in use.
	small := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(small, a, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.LoadCAFile("doveadm-ca-file", small)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	before := c.Pool(log)
	big, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(small, big, 0o600); err != nil {
		t.Fatal(err)
	}
	if c.Pool(log) != before || !c.Failing(log) {
		t.Errorf("a CA file grown to %d bytes after the start was loaded; want it refused and the CAs before kept", len(big))
	}
}

// Pool reads the file again: the same pool while its content stays the
// same, a new one when it changes, and the one before while it does not
// load, logged once a failure.
func TestCAFile_PoolFollowsTheFile(t *testing.T) {
	a, b := newCA(t), newCA(t)
	holds := func(pool *x509.CertPool, p []byte) bool {
		block, _ := pem.Decode(p)
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Verify(x509.VerifyOptions{Roots: pool})
		return err == nil
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	write := func(p []byte) {
		t.Helper()
		if err := os.WriteFile(path, p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(a)
	ca, err := config.LoadCAFile("redis-ca-file", path)
	if err != nil {
		t.Fatal(err)
	}
	var logged safebuf.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))

	first := ca.Pool(log)
	if !holds(first, a) || holds(first, b) {
		t.Fatal("the pool does not hold exactly the file's CA")
	}
	if again := ca.Pool(log); again != first {
		t.Error("the file unchanged, Pool returned another pool")
	}
	if logged.String() != "" {
		t.Errorf("the file unchanged, Pool logged %q", logged.String())
	}

	write(append(append([]byte{}, a...), b...))
	both := ca.Pool(log)
	if both == first || !holds(both, a) || !holds(both, b) {
		t.Fatal("after b was added, the pool does not hold both CAs")
	}
	if !strings.Contains(logged.String(), "redis-ca-file loaded again") || !strings.Contains(logged.String(), "certificates=2") {
		t.Errorf("log %q, want redis-ca-file loaded again, 2 certificates", logged.String())
	}

	for _, broken := range [][]byte{b[:len(b)-40], b[:len(b)-40], []byte("not PEM")} {
		write(broken)
		if got := ca.Pool(log); got != both {
			t.Fatalf("with %.20q in the file, Pool did not keep the CAs loaded before", broken)
		}
	}
	if !ca.Failing(log) {
		t.Error("Failing: false while the file does not load")
	}
	if n := strings.Count(logged.String(), "did not load"); n != 2 {
		t.Errorf("two failures in a row logged %d times, want twice (once each):\n%s", n, logged.String())
	}
	if strings.Contains(logged.String(), "BEGIN CERTIFICATE") {
		t.Errorf("the log shows the file's content:\n%s", logged.String())
	}

	write(b)
	if ca.Failing(log) {
		t.Error("Failing: true once the file loads again")
	}
	if got := ca.Pool(log); holds(got, a) || !holds(got, b) {
		t.Fatal("after a was taken out, the pool still trusts it, or not b")
	}
}

// BenchmarkCAFile_PoolUnchanged is what each request to doveadm pays for
// doveadm-ca-file while the file stays the same: a read and a compare.
func BenchmarkCAFile_PoolUnchanged(b *testing.B) {
	ca, err := testcert.NewCA(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	f, err := config.LoadCAFile("doveadm-ca-file", ca.File)
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	for b.Loop() {
		f.Pool(log)
	}
}
