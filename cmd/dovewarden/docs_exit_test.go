package main

import (
	"context"
	"errors"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDocs_ExitStatus keeps the exit status table of docs/configuration.md
// true: each case below exits with the status the table gives it, and
// that status's row names the case (the command, or the kind of failure),
// so a script can tell from the table what a status means.
func TestDocs_ExitStatus(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Exit status\n")
	if !ok {
		t.Fatal("docs/configuration.md has no section \"Exit status\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	rows := map[int]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([0-9]+)` \\| (.*)\\|$").FindAllStringSubmatch(section, -1) {
		n, _ := strconv.Atoi(m[1])
		rows[n] = m[2]
	}

	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusUnauthorized)
	}))
	defer refusing.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()

	for _, c := range []struct {
		args  []string
		stdin string
		code  int
		named string // in the row of code
	}{
		{[]string{"status", "-h"}, "", 0, "`-h`"},
		{[]string{"explain"}, deliveryEvent, 0, "`explain`"},
		{[]string{"explain"}, "{not json", 1, "`explain`"},
		{[]string{"loadgen", "--url", failing.URL + "/events", "--count", "1"}, "", 1, "`loadgen`"},
		{[]string{"frobnicate"}, "", 2, "unknown command"},
		{[]string{"status", "--bogus"}, "", 2, "unknown flag"},
		{[]string{"status"}, "", 2, "setting"},
		{[]string{"replicate", "--broker-url", refusing.URL, "alice"}, "", 2, "refused"},
		{[]string{"sweep", "--broker-url", down.URL, "--timeout", "1s"}, "", 2, "did not answer"},
		{[]string{"explain", "/nonexistent/events.jsonl"}, "", 2, "file"},
	} {
		env, _, _ := testEnv(nil, c.stdin)
		err := run(context.Background(), env, c.args)
		code := 0
		if err != nil && !errors.Is(err, flag.ErrHelp) {
			code = exitCode(err)
		}
		if code != c.code {
			t.Errorf("%q: exit status %d (%v), want %d", c.args, code, err, c.code)
			continue
		}
		row, ok := rows[code]
		if !ok {
			t.Errorf("%q: exit status %d has no row in docs/configuration.md's Exit status table", c.args, code)
		} else if !strings.Contains(row, c.named) {
			t.Errorf("%q: the row of exit status %d does not name %s: %s", c.args, code, c.named, row)
		}
	}
}
