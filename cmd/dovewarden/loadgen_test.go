package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// loadgenEnv runs a command with vars as its environment and captures stdout.
func loadgenEnv(vars map[string]string) (*environment, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &environment{
		getenv: func(k string) string { return vars[k] },
		stdin:  strings.NewReader(""),
		stdout: &out, stderr: &errb,
	}, &out, &errb
}

func loadgenTarget(t *testing.T, status int) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestLoadgen_PrintsReport(t *testing.T) {
	srv, n := loadgenTarget(t, http.StatusAccepted)
	env, out, _ := loadgenEnv(nil)
	err := run(context.Background(), env, []string{"loadgen", "-url", srv.URL + "/events", "-count", "50", "-concurrency", "2", "-version", "2.3"})
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != 50 {
		t.Errorf("server got %d requests, want 50", n.Load())
	}
	for _, want := range []string{"Dovecot 2.3 events", "sent      50", "ok (2xx)  50", "202=50", "p99"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestLoadgen_JSONReportAndEnvironment(t *testing.T) {
	srv, _ := loadgenTarget(t, http.StatusOK)
	env, out, _ := loadgenEnv(map[string]string{"DOVEWARDEN_COUNT": "7", "DOVEWARDEN_URL": srv.URL + "/events"})
	if err := run(context.Background(), env, []string{"loadgen", "-json"}); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Sent    uint64            `json:"sent"`
		OK      uint64            `json:"ok"`
		Status  map[string]uint64 `json:"status"`
		Latency struct {
			P50 int64 `json:"p50_ns"`
		} `json:"latency"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if rep.Sent != 7 || rep.OK != 7 || rep.Status["200"] != 7 || rep.Latency.P50 <= 0 {
		t.Errorf("report %+v", rep)
	}
}

func TestLoadgen_FailedRequestsExitOne(t *testing.T) {
	srv, _ := loadgenTarget(t, http.StatusServiceUnavailable)
	env, out, _ := loadgenEnv(nil)
	err := run(context.Background(), env, []string{"loadgen", "-url", srv.URL + "/events", "-count", "3"})
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("error %v, want exit code 1", err)
	}
	if !strings.Contains(out.String(), "503=3") {
		t.Errorf("report lacks the 503s:\n%s", out)
	}
	env, _, _ = loadgenEnv(nil)
	if err := run(context.Background(), env, []string{"loadgen", "-url", srv.URL + "/events", "-count", "3", "-allow-errors"}); err != nil {
		t.Fatalf("with -allow-errors: %v", err)
	}
}

func TestLoadgen_RefusesBadSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"loadgen"}, "unbounded"},
		{[]string{"loadgen", "-count", "1", "-url", "http://192.0.2.1/events"}, "allow-remote"},
		{[]string{"loadgen", "-count", "1", "-version", "2.2"}, "version"},
		{[]string{"loadgen", "-count", "1", "-mix", "FROB=1"}, "mix"},
		{[]string{"loadgen", "-count", "1", "extra"}, "unexpected"},
		{[]string{"loadgen", "-count", "1", "-concurrency", "9223372036854775807"}, "concurrency: 9223372036854775807, want 1 to 10000"},
		{[]string{"loadgen", "-count", "1", "-rate", "NaN"}, "rate: NaN, want a finite number"},
		{[]string{"loadgen", "-count", "1", "-rate", "Inf"}, "rate: +Inf, want a finite number"},
		// Zero is a value on the command line, not "the default".
		{[]string{"loadgen", "-count", "1", "-concurrency", "0"}, "concurrency: 0, want 1 to 10000"},
		{[]string{"loadgen", "-count", "1", "-users", "0"}, "users: 0, want at least 1"},
		{[]string{"loadgen", "-count", "1", "-hosts", "0"}, "hosts: 0, want at least 1"},
		{[]string{"loadgen", "-count", "1", "-timeout", "0s"}, "timeout: 0s, want more than 0"},
	} {
		env, out, _ := loadgenEnv(nil)
		err := run(context.Background(), env, tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one mentioning %q", tc.args, err, tc.want)
		}
		if exitCode(err) != 2 || out.Len() != 0 {
			t.Errorf("%q: exit code %d, output %q; want 2 and no report", tc.args, exitCode(err), out)
		}
	}
}

// TestLoadgen_URLErrorsHideThePassword: a --url with a user and password
// in it (as Dovecot's exporter URL carries them) that loadgen refuses is
// named without the password, as every other command names its URLs.
func TestLoadgen_URLErrorsHideThePassword(t *testing.T) {
	for _, u := range []string{
		"ftp://dovecot:s3cretpw@127.0.0.1/events",        // not http
		"http://dovecot:s3cretpw@192.0.2.1/events",       // not loopback
		"http://dovecot:s3cretpw@/events",                // no host
		"http://dovecot:s3cretpw@127.0.0.1:80x/events",   // unparsable
		"http://dovecot:s3cret/pw@127.0.0.1:8080/events", // a '/' in the password, not percent-encoded
	} {
		env, out, errb := loadgenEnv(nil)
		err := run(context.Background(), env, []string{"loadgen", "-count", "1", "-url", u})
		if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "url") {
			t.Errorf("%s: error %v (exit code %d), want one naming url, exit code 2", u, err, exitCode(err))
			continue
		}
		if all := err.Error() + out.String() + errb.String(); strings.Contains(all, "s3cret") {
			t.Errorf("%s: the password is in the output: %s", u, all)
		}
	}
}

// TestLoadgen_TransportErrorsHideAToken: a token in --url's query is not
// in the error of a request that failed (net/http's own errors spell the
// URL with it).
func TestLoadgen_TransportErrorsHideAToken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on
	env, out, errb := loadgenEnv(nil)
	err = run(context.Background(), env, []string{"loadgen", "-count", "1", "-url", "http://" + addr + "/events?access_token=s3cretTOK"})
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("a refused connection: %v; want an error naming %s", err, addr)
	}
	if all := err.Error() + out.String() + errb.String(); strings.Contains(all, "s3cretTOK") {
		t.Errorf("the token is in the output: %s", all)
	}
}
