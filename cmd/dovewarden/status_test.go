package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/redistest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm/doveadmtest"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// statusFixture runs `dovewarden local` with args added, against a fake
// doveadm on which every dsync of "bad" fails with exit code 75 and the
// others succeed; u1 changes and is replicated, bad changes and fails.
// The fake lists no user: the sweep at start would otherwise race the
// events for them, and bad's pending mark would carry the sweep's time,
// not its change's.
func statusFixture(t *testing.T, authorization string, args ...string) (base string) {
	t.Helper()
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	fake.Respond = func(c doveadmtest.Call) doveadmtest.Reply {
		if c.User == "bad" {
			return doveadmtest.Reply{ExitCode: 75}
		}
		return doveadmtest.Reply{}
	}
	base, stop, stderr := startLocalWith(t, fake, append([]string{"--max-attempts", "1"}, args...)...)
	t.Cleanup(func() { _ = stop() })
	for _, user := range []string{"u1", "bad"} {
		req, err := http.NewRequest(http.MethodPost, base+"/events", strings.NewReader(strings.Replace(deliveryEvent, `"user":"u1"`, `"user":"`+user+`"`, 1)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /events for %s: %d", user, resp.StatusCode)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(tr.CallsOf("bad")) == 0 || len(tr.CallsOf("u1")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("dsyncs of u1 %d, of bad %d; want some:\n%s", len(tr.CallsOf("u1")), len(tr.CallsOf("bad")), stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return base
}

// statusOut runs `dovewarden status args...` until want matches its
// output (the last dsyncs' records land just after their calls).
func statusOut(t *testing.T, want string, args ...string) string {
	t.Helper()
	re := regexp.MustCompile(want)
	deadline := time.Now().Add(10 * time.Second)
	for {
		env, stdout, stderr := testEnv(nil, "")
		err := run(context.Background(), env, append([]string{"status"}, args...))
		if err == nil && re.MatchString(stdout.String()) {
			return stdout.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %q: %v; want %q in:\n%s%s", args, err, want, stdout, stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStatus_FromRedis reads a real Redis that local mode (as sync on a
// cluster) keeps its state in: the overview names the failed user and its
// error, and a user's record its last success. Names are normalised as
// ingest's: U1 is u1.
func TestStatus_FromRedis(t *testing.T) {
	srv := redistest.Start(t)
	statusFixture(t, "", "--redis-url", srv.URL())

	out := statusOut(t, `(?m)^  failed +1`, "--redis-url", srv.URL())
	for _, want := range []string{
		// bad's change is not replicated: it waits, and the sweep retries.
		`(?m)^Users$`, `(?m)^  pending +1 +oldest change 2026-11-29 10:00:00Z \(\S+ ago\)$`, `(?m)^  excluded +0$`,
		`(?m)^Pending users \(oldest change first; 1 of 1\)\n  USER +SINCE +HOST\n  bad +2026-11-29 10:00:00Z \(\S+ ago\) +mail-a.test$`,
		`(?m)^  last completed +ended .* ago\), took `,
		`(?m)^Failed users \(oldest failure first; 1 of 1\)$`,
		`(?m)^  USER +FAILED +LAST SUCCESS +FAILURES +CLASS +LAST ERROR$`,
		`(?m)^  bad +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\S+ ago\) +- +1 +tempfail +.*75`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("overview lacks %q:\n%s", want, out)
		}
	}
	if regexp.MustCompile(`(?m) $`).MatchString(out) {
		t.Errorf("lines end in spaces:\n%q", out)
	}
	if strings.Contains(out, "Lanes") || strings.Contains(out, "Events") {
		t.Errorf("Redis knows no lanes and no events, but the overview shows some:\n%s", out)
	}

	out = statusOut(t, `last success`, "--redis-url", srv.URL(), "U1")
	for _, want := range []string{`(?m)^u1$`, `(?m)^  last success +\d{4}-.* ago\) +(full|incremental) from mail-a.test to tcp:127.0.0.1:1`,
		`(?m)^  last full sync +\d{4}-.* ago\) +started then$`,
		`(?m)^  failed +no`, `(?m)^  dsync state +tcp:127.0.0.1:1 +\d+ bytes`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("u1's record lacks %q:\n%s", want, out)
		}
	}

	// --json of users is a list, also of one.
	js := statusOut(t, `"user": "u1"`, "--redis-url", srv.URL(), "--json", "u1")
	var records []map[string]any
	if err := json.Unmarshal([]byte(js), &records); err != nil || len(records) != 1 || records[0]["user"] != "u1" {
		t.Errorf("--json u1: %v, %v\n%s", records, err, js)
	}

	js = statusOut(t, `"failed_users"`, "--redis-url", srv.URL(), "--json", "--list", "5")
	var o overview
	if err := json.Unmarshal([]byte(js), &o); err != nil {
		t.Fatalf("--json: %v\n%s", err, js)
	}
	if o.Users.Failed != 1 || len(o.FailedUsers) != 1 || o.FailedUsers[0].User != "bad" || o.FailedUsers[0].LastExitCode != 75 {
		t.Errorf("--json overview %+v, want bad failed with exit code 75", o)
	}

	out = statusOut(t, `no record`, "--redis-url", srv.URL(), "nobody")
	if !strings.Contains(out, "never replicated") {
		t.Errorf("a user Redis does not know: %s", out)
	}
}

// TestStatus_FromLocal asks a running local mode with the embedded Redis
// and credentials, which only it can read: the same overview, and its
// lanes. Without the token the error names the settings.
func TestStatus_FromLocal(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := statusFixture(t, "Bearer s3cret-token", "--auth-token-file", tokenFile)

	out := statusOut(t, `(?m)^  failed +1`, "--url", base, "--auth-token-file", tokenFile)
	for _, want := range []string{`(?m)^Lanes$`, `(?m)^  sync-high +yes +\d+ +\d+ +\d+ +\d+$`, `(?m)^  bad +.* tempfail `} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("overview lacks %q:\n%s", want, out)
		}
	}
	out = statusOut(t, `last success`, "--url", base, "--auth-token-file", tokenFile, "u1", "bad")
	if !regexp.MustCompile(`(?s)^u1\n.*\n\nbad\n.*  last failure +\d{4}-.* ago\) +tempfail \(exit code 75\): .*  failed +yes, at `).MatchString(out) {
		t.Errorf("records of u1 and bad:\n%s", out)
	}

	env, _, _ := testEnv(nil, "")
	err := run(context.Background(), env, []string{"status", "--url", base})
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "auth-token-file") {
		t.Errorf("without the token: %v, want 401 naming auth-token-file", err)
	}
	// A url that already ends in /status asks for /status/status, a
	// user's record: refused, not shown as an overview of zeros.
	err = run(context.Background(), env, []string{"status", "--url", base + "/status", "--auth-token-file", tokenFile})
	if err == nil || !strings.Contains(err.Error(), `no "users"`) || !strings.Contains(err.Error(), "without /status") {
		t.Errorf("url ending in /status: %v, want a refusal", err)
	}
}

// TestStatus_EventsFromDovecot: local mode's overview says what ingest
// received from each Dovecot host since the start, and that nothing came
// while nothing has: an exporter that does not reach ingest (a wrong URL,
// the snippet's metric filters not loaded) showed nowhere before, and its
// changes waited for the daily full sync. The first event of a host is
// logged, with the name a host map's key must be.
func TestStatus_EventsFromDovecot(t *testing.T) {
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	base, stop, stderr := startLocalWith(t, fake)
	t.Cleanup(func() { _ = stop() })

	out := statusOut(t, `(?m)^Events from Dovecot$`, "--url", base)
	if !regexp.MustCompile(`(?m)^  none +since the start \d{4}-.* ago\): if mail changed since, Dovecot's event exporter does not reach this process`).MatchString(out) {
		t.Errorf("no event yet:\n%s", out)
	}
	for range 2 {
		resp, err := http.Post(base+"/events?host=mail-a.example.org", "application/json", strings.NewReader(deliveryEvent))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	out = statusOut(t, `(?m)^Events from Dovecot \(since the start `, "--url", base)
	if !regexp.MustCompile(`(?m)^  HOST +EVENTS +LAST\n  mail-a.example.org +2 +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\S+ ago\)$`).MatchString(out) {
		t.Errorf("two events from mail-a.example.org:\n%s", out)
	}
	js := statusOut(t, `"events"`, "--url", base, "--json")
	var o overview
	if err := json.Unmarshal([]byte(js), &o); err != nil || o.Events == nil || len(o.Events.Hosts) != 1 || o.Events.Hosts[0].Events != 2 || o.Events.Since.IsZero() {
		t.Errorf("--json events: %+v, %v\n%s", o.Events, err, js)
	}
	if logs := stderr.String(); strings.Count(logs, "first event from this Dovecot host") != 1 || !strings.Contains(logs, "host=mail-a.example.org") {
		t.Errorf("want the first event logged once, naming the host:\n%s", logs)
	}
}

// TestStatus_OtherJSONIsRefused: a url that answers JSON which is not
// dovewarden's status makes the command fail, for the overview and a user.
func TestStatus_OtherJSONIsRefused(t *testing.T) {
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok","version":"1.2.3"}`)
	}))
	t.Cleanup(other.Close)
	for _, args := range [][]string{{"status", "--url", other.URL}, {"status", "--url", other.URL, "alice"}} {
		env, stdout, _ := testEnv(nil, "")
		if err := run(context.Background(), env, args); err == nil || !strings.Contains(err.Error(), "not dovewarden local's status") {
			t.Errorf("%v: %v, want a refusal\n%s", args, err, stdout)
		}
	}
}

// TestStatus_LocalsEnvironment: the credentials have the names of local's
// own settings, in the environment too; here Basic auth with a password
// file.
func TestStatus_LocalsEnvironment(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := statusFixture(t, "Basic "+base64.StdEncoding.EncodeToString([]byte("admin:s3cret")),
		"--auth-user", "admin", "--auth-password-file", pwFile)
	env, stdout, stderr := testEnv(map[string]string{"DOVEWARDEN_URL": base, "DOVEWARDEN_AUTH_USER": "admin",
		"DOVEWARDEN_AUTH_PASSWORD_FILE": pwFile}, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := run(context.Background(), env, []string{"status", "bad"})
		if err == nil && regexp.MustCompile(`(?m)^  failed +yes`).MatchString(stdout.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status with local's environment: %v\n%s%s", err, stdout, stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStatus_Refusals(t *testing.T) {
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		args []string
		want string
	}{
		"no source":       {nil, "url or redis-url"},
		"two sources":     {[]string{"--url", "http://127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1"}, "url and redis-url: both set"},
		"token for redis": {[]string{"--redis-url", "redis://127.0.0.1:1", "--auth-token-file", "/nonexistent"}, "only with url"},
		"user alone":      {[]string{"--url", "http://127.0.0.1:1", "--auth-user", "admin"}, "set both or neither"},
		"user and token":  {[]string{"--url", "http://127.0.0.1:1", "--auth-user", "admin", "--auth-password-file", "/nonexistent", "--auth-token-file", "/nonexistent"}, "set one"},
		"empty password":  {[]string{"--url", "http://127.0.0.1:1", "--auth-user", "admin", "--auth-password-file", emptyFile}, "auth-password-file " + emptyFile + ": empty"},
		"empty token":     {[]string{"--url", "http://127.0.0.1:1", "--auth-token-file", emptyFile}, "auth-token-file " + emptyFile + ": empty"},
		"two credentials": {[]string{"--url", "http://admin:hunter2@127.0.0.1:1", "--auth-token-file", "/nonexistent"}, "credentials in the URL and in auth-*"},
		"bad user":        {[]string{"--url", "http://127.0.0.1:1", "--", "-f"}, `"-f"`},
		"list":            {[]string{"--url", "http://127.0.0.1:1", "--list", "5000"}, "list 5000"},
		"scheme":          {[]string{"--url", "ftp://u:hunter2@x/"}, "url ftp://u:xxxxx@x/"},
		"unreachable":     {[]string{"--url", "http://u:hunter2@127.0.0.1:1"}, "url http://u:xxxxx@127.0.0.1:1/status?list=20"},
		"redis down":      {[]string{"--redis-url", "redis://:hunter2@127.0.0.1:1/0", "--timeout", "2s"}, "redis-url redis://:xxxxx@127.0.0.1:1/0"},
		"username format": {[]string{"--url", "http://127.0.0.1:1", "--username-format", "%Q"}, "username-format"},
	} {
		t.Run(name, func(t *testing.T) {
			env, _, _ := testEnv(nil, "")
			err := run(context.Background(), env, append([]string{"status"}, tt.args...))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%v, want an error with %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

// TestLocal_StatusListParameter: GET /status lists up to ?list=N failed
// and pending users (20 by default); a bad N is the client's error.
func TestLocal_StatusListParameter(t *testing.T) {
	base := statusFixture(t, "")
	statusOut(t, `(?m)^  failed +1`, "--url", base)
	get := func(q string) (int, overview) {
		t.Helper()
		resp, err := http.Get(base + "/status" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var o overview
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, o
	}
	for q, want := range map[string]int{"": 1, "?list=1000": 1, "?list=0": 0} {
		code, o := get(q)
		if code != http.StatusOK || len(o.FailedUsers) != want || o.Users.Failed != 1 {
			t.Errorf("GET /status%s: %d, %d failed users listed of %d; want %d listed", q, code, len(o.FailedUsers), o.Users.Failed, want)
		}
	}
	resp, err := http.Get(base + "/status?list=0")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), `"failed_users": []`) || !strings.Contains(string(raw), `"pending_users": []`) {
		t.Errorf("GET /status?list=0 lists nothing as null, not []:\n%s", raw)
	}
	for _, q := range []string{"?list=-1", "?list=1001", "?list=abc"} {
		if code, _ := get(q); code != http.StatusBadRequest {
			t.Errorf("GET /status%s: %d, want 400", q, code)
		}
	}
}

// TestStatus_URLAsksForTheNameGiven: a running local names users with its
// own --username-format, so the command sends the name as given, and
// escaped: a user "Al/ice" of a local keeping case is found.
func TestStatus_URLAsksForTheNameGiven(t *testing.T) {
	tr := doveadmtest.NewTracker(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", tr)
	base, stop, stderr := startLocalWith(t, fake, "--username-format", "%u")
	t.Cleanup(func() { _ = stop() })
	postDovecotEvent(t, base, strings.Replace(deliveryEvent, `"user":"u1"`, `"user":"Al/ice"`, 1))
	out := statusOut(t, `last success +\d`, "--url", base, "Al/ice")
	if !strings.HasPrefix(out, "Al/ice\n") {
		t.Errorf("status of Al/ice:\n%s\n%s", out, stderr)
	}
}

// TestStatus_TimeoutBoundsRedis: a Redis that takes connections and never
// answers makes the command fail within --timeout, with one error line
// and none of the Redis library's own.
func TestStatus_TimeoutBoundsRedis(t *testing.T) {
	addr := redistest.Silent(t)
	env, _, stderr := testEnv(nil, "")
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), env, []string{"status", "--redis-url", "redis://" + addr + "/0", "--timeout", "300ms"})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "redis-url redis://"+addr) {
			t.Errorf("%v, want an error naming redis-url", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("still waiting for Redis 3 s into a --timeout of 300ms")
	}
	if stderr.String() != "" {
		t.Errorf("stderr has more than the error:\n%s", stderr)
	}
}

// TestStatus_AChangeWithoutTimeIsPending: ingest cannot hand a change
// whose Dovecot event has no start_time or end_time to the Broker; the
// user's pending mark takes when ingest received it, so status shows the
// user pending (not "no record ... no change waits") and the overview an
// oldest change.
func TestStatus_AChangeWithoutTimeIsPending(t *testing.T) {
	srv := redistest.Start(t)
	env, _, stderr := testEnv(nil, "")
	base, _ := serve(t, env, stderr, "ingest", "--listen", "127.0.0.1:0",
		"--broker-url", "http://127.0.0.1:1", "--redis-url", srv.URL())
	noTime := `{"event":"mail_delivery_finished","hostname":"mail-a.test","categories":["service:lmtp"],"fields":{"user":"u1","message_id":"<m@test>"}}`
	resp, err := http.Post(base+"/events", "application/json", strings.NewReader(noTime))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("POST with the broker down: %d, want 503\n%s", resp.StatusCode, stderr)
	}
	out := statusOut(t, `(?m)^  pending +since 2\d\d\d-`, "--redis-url", srv.URL(), "u1")
	if strings.Contains(out, "no record") || !strings.Contains(out, "mail-a.test") {
		t.Errorf("u1's status:\n%s", out)
	}
	statusOut(t, `(?m)^  pending +1 +oldest change 2\d\d\d-`, "--redis-url", srv.URL())
}

// TestStatus_URLEscapesEveryName: with url, each name reaches GET
// /status/{user} of a ServeMux routing as local's does, "." and ".."
// included: escaped as a path would be they stay dot-segments, which the
// mux cleans away (/status/.. is /).
func TestStatus_URLEscapesEveryName(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status/{user}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, state.UserStatus{User: r.PathValue("user")})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, name := range []string{".", "..", "...", "a/b", "a%b", "a%2Fb", "a#b", "x{y}z", "jürgen", "john doe", "a+b", "a;b"} {
		env, stdout, stderr := testEnv(nil, "")
		err := run(context.Background(), env, []string{"status", "--url", srv.URL, "--json", "--", name})
		var recs []state.UserStatus
		if err == nil {
			err = json.Unmarshal([]byte(stdout.String()), &recs)
		}
		if err != nil || len(recs) != 1 || recs[0].User != name {
			t.Errorf("status %q: %v, records %+v%s", name, err, recs, stderr)
		}
	}
}

// TestURLs_APasswordNotPercentEncoded: a password with '/' in it (as
// `openssl rand -base64` makes them), written into a URL as it is, makes
// the URL unparsable. The error says how to write it, and does not
// claim that the scheme is wrong.
func TestURLs_APasswordNotPercentEncoded(t *testing.T) {
	for _, args := range [][]string{
		{"status", "--redis-url", "redis://:hunter2/Qx+w@127.0.0.1:6379/0"},
		{"status", "--url", "http://admin:hunter2/Qx+w@127.0.0.1:8080"},
		{"replicate", "--broker-url", "http://admin:hunter2/Qx+w@127.0.0.1:8080/local/dovewarden", "alice"},
	} {
		env, _, _ := testEnv(nil, "")
		err := run(context.Background(), env, args)
		if err == nil || !strings.Contains(err.Error(), "percent-encoded") || strings.Contains(err.Error(), "want redis://") {
			t.Errorf("%q: %v, want an error saying that the password goes percent-encoded", args, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: the error shows the password: %v", args, err)
		}
	}
}

// TestStatus_TwoSourcesNameTheVariable: --url on the command line with a
// DOVEWARDEN_REDIS_URL left in the environment (an env file of sync or
// local, sourced in the shell) is refused, saying that both are set and
// which one came from the environment, not as if neither were given.
func TestStatus_TwoSourcesNameTheVariable(t *testing.T) {
	env, _, _ := testEnv(map[string]string{"DOVEWARDEN_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}, "")
	err := run(context.Background(), env, []string{"status", "--url", "http://127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "both set") || !strings.Contains(err.Error(), "redis-url (from DOVEWARDEN_REDIS_URL)") ||
		strings.Contains(err.Error(), "hunter2") {
		t.Errorf("%v, want an error saying that url and redis-url are both set, redis-url from DOVEWARDEN_REDIS_URL", err)
	}
}

// TestStatus_AnAnswerQuotingTheCredentialsShowsNone: a url that is not
// dovewarden local's (a proxy's or another service's error page that
// quotes the request back) has its answer quoted in the error, without
// the credentials it was sent.
func TestStatus_AnAnswerQuotingTheCredentialsShowsNone(t *testing.T) {
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pw, _ := r.BasicAuth()
		http.Error(w, "refused: Authorization: "+r.Header.Get("Authorization")+" password: "+pw, http.StatusBadRequest)
	}))
	defer echo.Close()
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A password that holds a query token: the token replaced first
	// would leave the rest of the password.
	longFile := filepath.Join(dir, "long")
	if err := os.WriteFile(longFile, []byte("hunter2-tok3n-rest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withPassword := strings.Replace(echo.URL, "http://", "http://admin:hunter2@", 1)
	for name, args := range map[string][]string{
		"password in url":                  {"--url", withPassword},
		"auth-password-file":               {"--url", echo.URL, "--auth-user", "admin", "--auth-password-file", pwFile},
		"auth-token-file":                  {"--url", echo.URL, "--auth-token-file", pwFile},
		"a password holding a query token": {"--url", echo.URL + "/?token=tok3n", "--auth-user", "admin", "--auth-password-file", longFile},
	} {
		env, stdout, _ := testEnv(nil, "")
		err := run(context.Background(), env, append([]string{"status"}, args...))
		if err == nil || !strings.Contains(err.Error(), "400 Bad Request: refused") {
			t.Fatalf("%s: %v, want the answer quoted", name, err)
		}
		for _, secret := range []string{"hunter2", "-rest", base64.StdEncoding.EncodeToString([]byte("admin:hunter2"))} {
			if strings.Contains(err.Error()+stdout.String(), secret) {
				t.Errorf("%s: shows %q: %v", name, secret, err)
			}
		}
	}
}

// TestStatus_AUserInADsyncOfTheDefaultHost: a user whose dsync runs
// through the default host (`dovewarden replicate` without --host) shows
// where from as its last success does, "default host", not a dangling
// "from".
func TestStatus_AUserInADsyncOfTheDefaultHost(t *testing.T) {
	srv := redistest.Start(t)
	fake := doveadmtest.NewServer(t, "mail-a.test", nil)
	started, free := holdU1(t, fake)
	base, stop, stderr := startLocalWith(t, fake, "--redis-url", srv.URL(), "--sweep-every", "0")
	env, _, errb := testEnv(nil, "")
	if err := run(context.Background(), env, []string{"replicate", "--broker-url", base + "/local/dovewarden", "u1"}); err != nil {
		t.Fatalf("replicate: %v\n%s", err, errb)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatalf("no dsync of u1\n%s", stderr)
	}
	for _, args := range [][]string{{"--redis-url", srv.URL()}, {"--url", base}} {
		env, out, errb := testEnv(nil, "")
		if err := run(context.Background(), env, append(append([]string{"status"}, args...), "u1")); err != nil {
			t.Fatalf("status %s: %v\n%s", args[0], err, errb)
		}
		line := regexp.MustCompile(`(?m)^  in progress .*$`).FindString(out.String())
		if !strings.HasSuffix(line, ", from default host") {
			t.Errorf("status %s: in progress line %q, want it to end \", from default host\"\n%s", args[0], line, out)
		}
		// The overview lists it among the dsyncs running now, as
		// `doveadm replicator dsync-status` did.
		env, out, errb = testEnv(nil, "")
		if err := run(context.Background(), env, append([]string{"status"}, args...)); err != nil {
			t.Fatalf("status %s: %v\n%s", args[0], err, errb)
		}
		for _, want := range []string{`(?m)^  in progress +1$`, `(?m)^In progress \(longest running first; 1 of 1\)\n  USER +SINCE +BY +FROM\n  u1 +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\S+ ago\) +\S+ +default host$`} {
			if !regexp.MustCompile(want).MatchString(out.String()) {
				t.Errorf("status %s: the overview lacks %q:\n%s", args[0], want, out)
			}
		}
	}
	free()
	// Once it ended, nothing runs.
	statusOut(t, `(?m)^  in progress +0$`, "--redis-url", srv.URL())
	js := statusOut(t, `"running_users": \[\]`, "--redis-url", srv.URL(), "--json")
	if !strings.Contains(js, `"in_progress": 0`) {
		t.Errorf("--json overview without a running dsync:\n%s", js)
	}
	if err := stop(); err != nil {
		t.Fatalf("local returned %v", err)
	}
}

// A user excluded by hand (SADD dovewarden:excluded) keeps its failed mark
// until its next change or sweep drops it, and nothing retries it: its
// record and the failed list say so, not that the sweep retries it.
func TestStatus_AnExcludedFailedUserIsNotRetried(t *testing.T) {
	now := time.Now()
	s := state.UserStatus{User: "alice", Excluded: true, Failed: true, FailedSince: now, LastFailure: now,
		LastFailureClass: "tempfail", LastError: "exit code 75", ConsecutiveFailures: 1}
	var out bytes.Buffer
	if err := printUser(&out, s, now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "the sweep retries it") || !strings.Contains(out.String(), "excluded: not retried") {
		t.Errorf("an excluded failed user's record:\n%s", out.String())
	}
	out.Reset()
	if err := printOverview(&out, overview{FailedUsers: []state.UserStatus{s}}, now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "(excluded: not retried) exit code 75") {
		t.Errorf("the failed list:\n%s", out.String())
	}
	// A failed user not excluded: the sweep retries it.
	s.Excluded = false
	out.Reset()
	if err := printUser(&out, s, now); err != nil || !strings.Contains(out.String(), "the sweep retries it") {
		t.Errorf("a failed user's record: %v\n%s", err, out.String())
	}
}

// TestStatus_SweepCountsNameTheirSweep: the counts the overview shows are
// those of the sweep Redis holds, the running one while a sweep runs: they
// are not shown as the last completed sweep's, which the line above names.
func TestStatus_SweepCountsNameTheirSweep(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	last := state.SweepStatus{LastCompletedStart: now.Add(-2 * time.Hour), LastCompletedEnd: now.Add(-2*time.Hour + time.Minute)}
	for _, c := range []struct {
		name  string
		sweep func(s *state.SweepStatus)
		want  string
	}{
		{"running", func(s *state.SweepStatus) {
			s.Running, s.Started, s.Total, s.Offset = true, now.Add(-time.Minute), 10, 5
		}, "counts so far"},
		{"completed", func(s *state.SweepStatus) {
			s.Started, s.Finished = now.Add(-2*time.Hour), now.Add(-2*time.Hour+time.Minute)
		}, "last counts"},
		{"ended unfinished", func(s *state.SweepStatus) { s.Started, s.Total, s.Offset = now.Add(-time.Hour), 10, 5 }, "unfinished sweep's counts"},
	} {
		s := last
		s.Counts = map[string]int64{"requested_stale": 3}
		c.sweep(&s)
		var out bytes.Buffer
		if err := printOverview(&out, overview{Sweep: s}, now); err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(c.want) + ` +requested_stale 3$`).MatchString(out.String()) {
			t.Errorf("%s: the counts are not shown as %q:\n%s", c.name, c.want, &out)
		}
	}
}
