package doveadm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
)

// collect lists every user of ep into a slice.
func collect(l doveadm.Lister, ep doveadm.Endpoint) ([]string, error) {
	var got []string
	err := l.ListUsers(context.Background(), ep, func(u string) error { got = append(got, u); return nil })
	return got, err
}

func TestHTTP_ListUsers(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.SetUsers("u1", "u2", "x@dom.test", "user with space")

	got, err := collect(doveadm.NewHTTP(nil, 5*time.Second), endpoint(s))

	if err != nil || strings.Join(got, "|") != "u1|u2|x@dom.test|user with space" {
		t.Fatalf("ListUsers = %q, %v", got, err)
	}
	if s.ListCalls() != 1 || len(s.Tracker.Calls()) != 0 {
		t.Errorf("list calls %d, syncs %d", s.ListCalls(), len(s.Tracker.Calls()))
	}
}

func TestHTTP_ListUsersEmptyAndAPIKey(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Password = "the-api-key"
	ep := endpoint(s)
	ep.Password, ep.APIKey = "", "the-api-key"
	got, err := collect(doveadm.NewHTTP(nil, 5*time.Second), ep)
	if err != nil || len(got) != 0 {
		t.Fatalf("ListUsers = %q, %v", got, err)
	}
}

func TestHTTP_ListUsersStopsWhenTheCallbackFails(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.SetUsers("u1", "u2", "u3")
	stop := errors.New("enough")
	n := 0
	err := doveadm.NewHTTP(nil, 5*time.Second).ListUsers(context.Background(), endpoint(s), func(string) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Fatalf("err %v after %d users", err, n)
	}
}

func TestHTTP_ListUsersFailures(t *testing.T) {
	tests := []struct {
		name  string
		reply doveadmtest.Reply
		kind  doveadm.Kind
		code  int
	}{
		{"exit 75", doveadmtest.Reply{ExitCode: 75}, doveadm.KindExitCode, 75},
		{"empty reply", doveadmtest.Reply{Empty: true}, doveadm.KindTransport, 0},
		{"HTTP 503", doveadmtest.Reply{Status: 503}, doveadm.KindTransport, 0},
		// A proxy in front of doveadm asks to be tried later, as sync
		// takes it too: the sweep lists the host again.
		{"HTTP 408", doveadmtest.Reply{Status: 408}, doveadm.KindTransport, 0},
		{"HTTP 425", doveadmtest.Reply{Status: 425}, doveadm.KindTransport, 0},
		{"HTTP 429", doveadmtest.Reply{Status: 429}, doveadm.KindTransport, 0},
		{"HTTP 404", doveadmtest.Reply{Status: 404}, doveadm.KindProtocol, 0},
		{"internalError", doveadmtest.Reply{ErrorType: "internalError"}, doveadm.KindInternal, 0},
		{"unknownMethod", doveadmtest.Reply{ErrorType: "unknownMethod"}, doveadm.KindProtocol, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := doveadmtest.NewServer(t, "mail-a", nil)
			s.RespondList = func() doveadmtest.Reply { return tt.reply }
			_, err := collect(doveadm.NewHTTP(nil, 5*time.Second), endpoint(s))
			var de *doveadm.Error
			if !errors.As(err, &de) || de.Kind != tt.kind || de.ExitCode != tt.code {
				t.Fatalf("err = %#v, want kind %s code %d", err, tt.kind, tt.code)
			}
			if !strings.Contains(err.Error(), "list users via doveadm at "+s.APIURL()) {
				t.Errorf("error lacks context: %v", err)
			}
		})
	}
}

func TestHTTP_ListUsersWrongPasswordNeverShown(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	ep := endpoint(s)
	ep.Password = "wrong-password-do-not-show"
	ep.URL = strings.Replace(ep.URL, "http://", "http://doveadm:url-password-do-not-show@", 1)
	_, err := collect(doveadm.NewHTTP(nil, 5*time.Second), ep)
	var de *doveadm.Error
	if !errors.As(err, &de) || de.Kind != doveadm.KindUnauthorized || strings.Contains(err.Error(), "do-not-show") {
		t.Fatalf("err = %v", err)
	}
}

func TestHTTP_ListUsersGarbledReplies(t *testing.T) {
	for name, tt := range map[string]struct {
		body string
		kind doveadm.Kind
	}{
		"garbage":     {`<html>hello</html>`, doveadm.KindProtocol},
		"wrong shape": {`{"userList":[]}`, doveadm.KindProtocol},
		"no userList": {`[["doveadmResponse",{"u1":{"uid":"5000"}},"TAG"]]`, doveadm.KindProtocol},
		"not strings": {`[["doveadmResponse",{"userList":[1,2]},"TAG"]]`, doveadm.KindProtocol},
		"wrong tag":   {`[["doveadmResponse",{"userList":["u1"]},"someone-else"]]`, doveadm.KindProtocol},
		"truncated":   {`[["doveadmResponse",{"userList":["u1","u`, doveadm.KindTransport},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var req [][]any
			_ = jsonDecode(r, &req)
			tag, _ := req[0][2].(string)
			w.Write([]byte(strings.ReplaceAll(tt.body, "TAG", tag)))
		}))
		_, err := collect(doveadm.NewHTTP(nil, 2*time.Second), doveadm.Endpoint{URL: srv.URL, Password: "p"})
		srv.Close()
		var de *doveadm.Error
		if !errors.As(err, &de) || de.Kind != tt.kind {
			t.Errorf("%s: err %v, want kind %s", name, err, tt.kind)
		}
	}
}

func TestHTTP_ListUsersTimeout(t *testing.T) {
	s := doveadmtest.NewServer(t, "mail-a", nil)
	s.Latency = 2 * time.Second
	_, err := collect(doveadm.NewHTTP(nil, 100*time.Millisecond), endpoint(s))
	if r := doveadm.Decide(err); r.Class != "transport" {
		t.Fatalf("err %v decided %+v", err, r)
	}
}

// fakeLister writes a shell script that plays `doveadm user '*'`: it
// records its arguments and prints out, or fails with exit.
func fakeLister(t *testing.T, out string, exit int) (bin, argvFile string) {
	dir := t.TempDir()
	argvFile = filepath.Join(dir, "argv")
	script := fmt.Sprintf("#!/bin/sh\nfor a in \"$@\"; do printf '%%s\\n' \"$a\"; done > '%s'\nprintf '%%s' '%s'\necho 'Error: the fake failed' >&2\nexit %d\n",
		argvFile, out, exit)
	bin = filepath.Join(dir, "doveadm")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, argvFile
}

func TestExec_ListUsers(t *testing.T) {
	// A name with white space around it is given as listed, as the HTTP
	// API gives it, for the sweep to refuse: trimmed, it would name
	// another user.
	bin, argvFile := fakeLister(t, "u1\nu2\r\n\nx@dom.test\ntrail \n", 0)

	got, err := collect(doveadm.NewExec(bin, 5*time.Second), doveadm.Endpoint{Config: "/etc/dovecot/a.conf"})

	if err != nil || strings.Join(got, "|") != "u1|u2|x@dom.test|trail " {
		t.Fatalf("ListUsers = %q, %v", got, err)
	}
	argv, _ := os.ReadFile(argvFile)
	// The mask reaches doveadm as one argument, unexpanded.
	if string(argv) != "-c\n/etc/dovecot/a.conf\nuser\n*\n" {
		t.Errorf("argv %q", argv)
	}
}

// TestExec_ListUsersKilledMidLine: doveadm killed by the timeout while it
// writes a name leaves a part of it, which is no user; a last line without
// a newline from a doveadm that exits 0 is one.
func TestExec_ListUsersKilledMidLine(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "doveadm")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nprintf 'alice\\ncarol\\nbo'\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := collect(doveadm.NewExec(bin, 300*time.Millisecond), doveadm.Endpoint{})
	if r := doveadm.Decide(err); r.Class != "transport" || strings.Join(got, "|") != "alice|carol" {
		t.Errorf("ListUsers = %q, %v (%+v); want alice and carol, and a transport failure", got, err, r)
	}
	bin, _ = fakeLister(t, "u1\nu2", 0)
	if got, err := collect(doveadm.NewExec(bin, 5*time.Second), doveadm.Endpoint{}); err != nil || strings.Join(got, "|") != "u1|u2" {
		t.Errorf("a last line without a newline: %q, %v", got, err)
	}
}

func TestExec_ListUsersExitCode(t *testing.T) {
	bin, _ := fakeLister(t, "", 75)
	_, err := collect(doveadm.NewExec(bin, 5*time.Second), doveadm.Endpoint{})
	if doveadm.ExitCodeOf(err) != 75 || !strings.Contains(err.Error(), "the fake failed") {
		t.Fatalf("err %v", err)
	}
	// A listing's exit code is told by what it means, not by what the
	// sync policy does about it ("retry as a full sync").
	bin, _ = fakeLister(t, "", 65)
	_, err = collect(doveadm.NewExec(bin, 5*time.Second), doveadm.Endpoint{})
	if msg := fmt.Sprint(err); !strings.Contains(msg, "exit code 65 (data error: a userdb failed") || !strings.Contains(msg, "vsz_limit") || strings.Contains(msg, "full sync") {
		t.Errorf("exit code 65 of a listing: %v", err)
	}
	_, err = collect(doveadm.NewExec("/nonexistent/doveadm", time.Second), doveadm.Endpoint{})
	if r := doveadm.Decide(err); r.Class != "transport" {
		t.Errorf("missing binary: %v decided %+v", err, r)
	}
}

func TestExec_ListUsersStopsWhenTheCallbackFails(t *testing.T) {
	bin, _ := fakeLister(t, "u1\nu2\nu3\n", 0)
	stop := errors.New("enough")
	err := doveadm.NewExec(bin, 5*time.Second).ListUsers(context.Background(), doveadm.Endpoint{}, func(string) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("err %v", err)
	}
}

func jsonDecode(r *http.Request, v any) error { return json.NewDecoder(r.Body).Decode(v) }
