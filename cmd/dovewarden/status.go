package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/printable"
	"github.com/dovewarden/dovewarden-knative/pkg/config"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
	"github.com/dovewarden/dovewarden-knative/pkg/state"
)

// statusListDefault and statusListMax bound the failed and pending users
// the overview lists (?list=N on GET /status, --list of the command).
const (
	statusListDefault = 20
	statusListMax     = 1000
)

// readOverview reads what the overview shows from Redis; local mode adds
// its lanes.
func readOverview(ctx context.Context, st *state.Store, list int64) (overview, error) {
	var o overview
	var err error
	if o.Users, err = st.Overview(ctx); err != nil {
		return o, err
	}
	if o.Sweep, err = st.SweepStatus(ctx); err != nil {
		return o, err
	}
	if o.Users.InProgress, o.RunningUsers, err = st.Running(ctx, list); err != nil {
		return o, err
	}
	if o.FailedUsers, err = st.Failed(ctx, list); err != nil {
		return o, err
	}
	if o.PendingUsers, err = st.Pending(ctx, list); err != nil {
		return o, err
	}
	// Lists, not null, in the JSON also when empty or not asked for.
	if o.RunningUsers == nil {
		o.RunningUsers = []state.UserStatus{}
	}
	if o.FailedUsers == nil {
		o.FailedUsers = []state.UserStatus{}
	}
	if o.PendingUsers == nil {
		o.PendingUsers = []state.PendingUser{}
	}
	return o, nil
}

// listParam reads GET /status's list parameter.
func listParam(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("list")
	if v == "" {
		return statusListDefault, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > statusListMax {
		return 0, fmt.Errorf("list %q: want a number from 0 to %d", v, statusListMax)
	}
	return n, nil
}

// runStatus shows the replication status, as `doveadm replicator status`
// did: with no user the overview (users pending, failed and excluded, the
// sweep, local mode's lanes, and the failed users and those whose changes
// waited longest),
// with users each one's record. It reads Redis (--redis-url: a cluster's,
// or local mode's with --redis-url), or asks a running `dovewarden local`
// (--url), which also serves its embedded Redis's status.
func runStatus(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet("status", env)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: dovewarden status [flags] [USER...]\n\nShows the replication status, like `doveadm replicator status`: with no user\nthe overview, with users each one's record. Reads it from Redis (redis-url),\nor from a running dovewarden local (url).\n\nflags:")
		fs.PrintDefaults()
	}
	var conn state.Conn
	conn.RegisterFlags(fs, "the Redis that sync keeps its state in (redis://, rediss://, unix://; Sentinel: ?master_name=)")
	base := fs.String("url", "", "a running dovewarden local (http://127.0.0.1:8080, or https://), asked over HTTP")
	// The credentials have the names, and take the values, of local's
	// own settings.
	var cred statusCredentials
	fs.StringVar(&cred.user, "auth-user", "", "with url: the HTTP Basic auth user of a dovewarden local with auth-user")
	fs.StringVar(&cred.passwordFile, "auth-password-file", "", "with url: file holding auth-user's password")
	fs.StringVar(&cred.tokenFile, "auth-token-file", "", "with url: file holding the Bearer token of a dovewarden local with auth-token")
	fs.StringVar(&cred.caFile, "tls-ca-file", "", "with an https url: PEM file of the CA certificates that sign the certificate of a dovewarden local with tls-cert-file; default: the system's")
	format := fs.String("username-format", dovecot.DefaultUsernameFormat, "normalise usernames like Dovecot's auth_username_format, as ingest does")
	list := fs.Int64("list", statusListDefault, fmt.Sprintf("with no user: how many users to list in each of the in progress, failed and pending lists (0 to %d)", statusListMax))
	asJSON := fs.Bool("json", false, "print JSON (GET /status's) instead of text")
	timeout := fs.Duration("timeout", 10*time.Second, "time to read the status")
	if err := config.Parse(fs, args, env.getenv); err != nil {
		return err
	}
	// fromEnv names the variable a setting came from, for a conflict
	// with one given on the command line.
	fromEnv := func(name, v string) string {
		if env.getenv(config.EnvName(name)) == v {
			return " (from " + config.EnvName(name) + ")"
		}
		return ""
	}
	switch {
	case *base == "" && conn.URL == "":
		return errors.New("url or redis-url (DOVEWARDEN_URL, DOVEWARDEN_REDIS_URL): give one, a running dovewarden local's address or the Redis sync uses")
	case *base != "" && conn.URL != "":
		return fmt.Errorf("url%s and redis-url%s: both set; give one, a running dovewarden local's address or the Redis sync uses", fromEnv("url", *base), fromEnv("redis-url", conn.URL))
	case cred != (statusCredentials{}) && *base == "":
		return errors.New("auth-user, auth-password-file, auth-token-file, tls-ca-file: only with url (a running dovewarden local); Redis takes its password in redis-url, its CA in redis-ca-file")
	case *list < 0 || *list > statusListMax:
		return fmt.Errorf("list %d: want 0 to %d", *list, statusListMax)
	case *timeout <= 0:
		return fmt.Errorf("timeout %s: must be positive", *timeout)
	}
	uf, err := dovecot.ParseUsernameFormat(*format)
	if err != nil {
		return fmt.Errorf("username-format: %w", err)
	}
	// Redis keys users by ingest's normalised name; a running local
	// normalises with its own --username-format.
	users := make([]string, 0, fs.NArg())
	for _, name := range fs.Args() {
		u := name
		if *base == "" {
			u = uf.Apply(name)
		}
		if err := doveadm.ValidateUser(u); err != nil {
			return err
		}
		users = append(users, u)
	}

	var src statusSource
	if *base != "" {
		h, err := newHTTPStatus(*base, cred)
		if err != nil {
			return err
		}
		src = h
	} else {
		if err := conn.Validate(); err != nil {
			return err
		}
		// The error says what failed; the library's own dial lines
		// would only repeat it.
		state.LogTo(slog.New(slog.DiscardHandler))
		conn.Timeout = *timeout
		st, err := state.Open(conn)
		if err != nil {
			return err
		}
		defer st.Close()
		src = redisStatus{st: st, url: conn.URL}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	if len(users) == 0 {
		o, err := src.overview(ctx, *list)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(env.stdout, o)
		}
		return printOverview(env.stdout, o, time.Now())
	}
	records := make([]state.UserStatus, 0, len(users))
	for _, u := range users {
		s, err := src.user(ctx, u)
		if err != nil {
			return err
		}
		records = append(records, s)
	}
	if *asJSON {
		return printJSON(env.stdout, records) // a list, however many users
	}
	for i, s := range records {
		if i > 0 {
			fmt.Fprintln(env.stdout)
		}
		if err := printUser(env.stdout, s, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// statusSource is where the status comes from.
type statusSource interface {
	overview(ctx context.Context, list int64) (overview, error)
	user(ctx context.Context, name string) (state.UserStatus, error)
}

type redisStatus struct {
	st  *state.Store
	url string
}

func (r redisStatus) overview(ctx context.Context, list int64) (overview, error) {
	o, err := readOverview(ctx, r.st, list)
	if err != nil {
		return o, fmt.Errorf("redis-url %s: %w", config.RedactURL(r.url), err)
	}
	return o, nil
}

func (r redisStatus) user(ctx context.Context, name string) (state.UserStatus, error) {
	s, err := r.st.Status(ctx, name)
	if err != nil {
		return s, fmt.Errorf("redis-url %s: %w", config.RedactURL(r.url), err)
	}
	return s, nil
}

// httpStatus asks a running dovewarden local.
type httpStatus struct {
	base   *url.URL
	auth   string
	client *http.Client
	// secrets are what of a request is secret, as an answer may quote
	// it back (config.RequestSecrets).
	secrets []string
}

// statusCredentials are what a dovewarden local with credentials asks
// for, and the CA of its certificate.
type statusCredentials struct{ user, passwordFile, tokenFile, caFile string }

func newHTTPStatus(base string, cred statusCredentials) (*httpStatus, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("url %s: want http:// or https:// and a host", config.RedactURL(base))
	}
	tc, err := clientTLS(cred.caFile, base, "url")
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	h := &httpStatus{base: u, client: &http.Client{Transport: tr}}
	switch {
	case (cred.user == "") != (cred.passwordFile == ""):
		return nil, errors.New("auth-user and auth-password-file: set both or neither")
	case cred.user != "" && cred.tokenFile != "":
		return nil, errors.New("auth-user and auth-token-file: set one")
	case (cred.user != "" || cred.tokenFile != "") && u.User != nil:
		return nil, fmt.Errorf("url %s: credentials in the URL and in auth-*: set one", config.RedactURL(base))
	case cred.user != "":
		pw, err := config.Secret("auth-password", "", cred.passwordFile)
		if err != nil {
			return nil, err
		}
		h.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(cred.user+":"+pw))
		h.secrets = []string{pw}
	case cred.tokenFile != "":
		tok, err := config.Secret("auth-token", "", cred.tokenFile)
		if err != nil {
			return nil, err
		}
		h.auth = "Bearer " + tok
	}
	// Longest first, as RequestSecrets sorts its own: a shorter secret
	// replaced first would leave the rest of a longer one that holds it
	// (the password within the Basic credentials, a query token within
	// the password).
	h.secrets = append(config.RequestSecrets(u, h.auth), h.secrets...)
	slices.SortStableFunc(h.secrets, func(a, b string) int { return len(b) - len(a) })
	return h, nil
}

func (h *httpStatus) overview(ctx context.Context, list int64) (overview, error) {
	var o overview
	err := h.get(ctx, "status", url.Values{"list": {strconv.FormatInt(list, 10)}}, &o, "users", "sweep")
	return o, err
}

func (h *httpStatus) user(ctx context.Context, name string) (state.UserStatus, error) {
	var s state.UserStatus
	err := h.get(ctx, "status/"+pathSegment(name), nil, &s, "user", "failed")
	return s, err
}

// pathSegment escapes name as one segment of a URL path. url.PathEscape
// leaves "." and "..", which a server takes as dot-segments (Go's
// ServeMux redirects /status/.. to /), so their dots are escaped too.
func pathSegment(name string) string {
	if name == "." || name == ".." {
		return strings.Repeat("%2E", len(name))
	}
	return url.PathEscape(name)
}

// get reads the escaped path under the base URL into v, a JSON object that
// must have the keys given: any other JSON (another service, or a url
// that already ends in /status, whose /status/status is a user's record)
// is not taken for an answer whose fields are all zero. Errors name the
// setting and never show the URL's password.
func (h *httpStatus) get(ctx context.Context, escapedPath string, query url.Values, v any, keys ...string) error {
	u := *h.base
	p := strings.TrimSuffix(u.EscapedPath(), "/") + "/" + escapedPath
	var err error
	if u.Path, err = url.PathUnescape(p); err != nil {
		return fmt.Errorf("url %s: %w", config.RedactURL(h.base.String()), err)
	}
	u.RawPath = p
	u.RawQuery = query.Encode()
	shown := config.RedactURL(u.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("url %s: %w", shown, err)
	}
	if h.auth != "" {
		req.Header.Set("Authorization", h.auth)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		// Go's error names the URL itself, its password masked.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("url %s: %w", shown, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("url %s: %w", shown, err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("url %s: %s (credentials: auth-user and auth-password-file, auth-token-file, or a user and password in url)", shown, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("url %s: %s: %s", shown, resp.Status, strings.TrimSpace(config.RedactSecrets(string(body), h.secrets)))
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return fmt.Errorf("url %s: not dovewarden local's status: %w", shown, err)
	}
	for _, k := range keys {
		if _, ok := fields[k]; !ok {
			return fmt.Errorf("url %s: not dovewarden local's status: no %q in the answer (give url as the process's base URL, without /status)", shown, k)
		}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("url %s: not dovewarden local's status: %w", shown, err)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// when shows a time in UTC and how long ago it was; "-" for none.
func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	ago := now.Sub(t).Round(time.Second)
	if ago < 0 {
		ago = 0
	}
	return t.UTC().Format("2006-01-02 15:04:05Z") + " (" + ago.String() + " ago)"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func printOverview(out io.Writer, o overview, now time.Time) error {
	w := newTable(out)
	w.println("Users")
	w.printf("  pending\t%d\toldest change %s\n", o.Users.Pending, when(o.Users.OldestPending, now))
	w.printf("  failed\t%d\t\n", o.Users.Failed)
	w.printf("  in progress\t%d\t\n", o.Users.InProgress)
	w.printf("  excluded\t%d\t\n", o.Users.Excluded)
	if !o.Users.Recovery.IsZero() {
		w.printf("  recovery\t%s\tthe sweep replicates every user not synced since\n", when(o.Users.Recovery, now))
	}
	w.println("Sweep")
	s := o.Sweep
	switch {
	case s.Running && s.Total < 0:
		w.printf("  running\tlisting users (%s, started %s)\t\n", s.Reason, when(s.Started, now))
	case s.Running:
		w.printf("  running\t%d of %d candidates examined (%s, started %s)\t\n", s.Offset, s.Total, s.Reason, when(s.Started, now))
	default:
		w.printf("  running\tno\t\n")
	}
	if s.LastCompletedEnd.IsZero() {
		w.printf("  last completed\tnone yet\t\n")
	} else {
		w.printf("  last completed\tended %s, took %s\t\n", when(s.LastCompletedEnd, now), s.LastCompletedEnd.Sub(s.LastCompletedStart).Round(time.Millisecond))
	}
	if len(s.Counts) > 0 {
		keys := make([]string, 0, len(s.Counts))
		for k := range s.Counts {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, s.Counts[k]))
		}
		// The counts are those of the sweep Redis holds: the running one
		// (its batches so far), or else the last one begun, which may
		// have ended unfinished (replaced, or its continuation lost) and
		// then is not the last completed one above.
		label := "last counts"
		switch {
		case s.Running:
			label = "counts so far"
		case s.Finished.IsZero():
			label = "unfinished sweep's counts"
		}
		w.printf("  %s\t%s\t\n", label, strings.Join(parts, ", "))
	}
	if err := w.flush(); err != nil {
		return err
	}
	var rows []string
	for _, l := range o.Lanes {
		rows = append(rows, fmt.Sprintf("%s\t%s\t%d\t%d\t%d\t%d", l.Trigger, yesNo(l.Enabled), l.Workers, l.Queued, l.InFlight, l.QueueSize))
	}
	if err := section(out, "Lanes", "TRIGGER\tENABLED\tWORKERS\tQUEUED\tIN FLIGHT\tQUEUE SIZE", rows); err != nil {
		return err
	}
	if err := printEvents(out, o.Events, now); err != nil {
		return err
	}
	rows = rows[:0]
	for _, u := range o.RunningUsers {
		by, host := u.InProgressBy, u.InProgressHost
		if by == "" {
			by = "-"
		}
		if host == "" {
			host = "default host" // as the user's record names it
		}
		rows = append(rows, fmt.Sprintf("%s\t%s\t%s\t%s", printable.String(u.User), when(u.InProgressSince, now), printable.String(by), printable.String(host)))
	}
	title := fmt.Sprintf("In progress (longest running first; %d of %d)", len(o.RunningUsers), o.Users.InProgress)
	if err := section(out, title, "USER\tSINCE\tBY\tFROM", rows); err != nil {
		return err
	}
	rows = rows[:0]
	for _, u := range o.FailedUsers {
		lastError := oneLine(u.LastError)
		if u.Excluded { // by hand: not retried, its next change or sweep drops the mark
			lastError = "(excluded: not retried) " + lastError
		}
		rows = append(rows, fmt.Sprintf("%s\t%s\t%s\t%d\t%s\t%s", printable.String(u.User), when(u.FailedSince, now), when(u.LastSuccess, now), u.ConsecutiveFailures, printable.String(u.LastFailureClass), lastError))
	}
	title = fmt.Sprintf("Failed users (oldest failure first; %d of %d)", len(o.FailedUsers), o.Users.Failed)
	if err := section(out, title, "USER\tFAILED\tLAST SUCCESS\tFAILURES\tCLASS\tLAST ERROR", rows); err != nil {
		return err
	}
	rows = rows[:0]
	for _, u := range o.PendingUsers {
		host := u.Host
		if host == "" {
			host = "-"
		}
		rows = append(rows, fmt.Sprintf("%s\t%s\t%s", printable.String(u.User), when(u.Since, now), printable.String(host)))
	}
	title = fmt.Sprintf("Pending users (oldest change first; %d of %d)", len(o.PendingUsers), o.Users.Pending)
	return section(out, title, "USER\tSINCE\tHOST", rows)
}

// printEvents prints what local mode's ingest received from each Dovecot
// host since the start, or that nothing came: an exporter that does not
// reach ingest (a wrong URL, its metric filters not loaded) shows nowhere
// else until users miss their mail on the replica.
func printEvents(out io.Writer, e *eventsStatus, now time.Time) error {
	if e == nil {
		return nil
	}
	if len(e.Hosts) == 0 {
		w := newTable(out)
		w.println("Events from Dovecot")
		w.printf("  none	since the start %s: if mail changed since, Dovecot's event exporter does not reach this process (its URL, the snippet's metric filters; docs/operations.md)\n", when(e.Since, now))
		return w.flush()
	}
	var rows []string
	for _, h := range e.Hosts {
		rows = append(rows, fmt.Sprintf("%s\t%d\t%s", printable.String(h.Host), h.Events, when(h.Last, now)))
	}
	return section(out, "Events from Dovecot (since the start "+when(e.Since, now)+")", "HOST\tEVENTS\tLAST", rows)
}

// section prints title and a table of rows under header (cells separated
// by tabs), or nothing when there is no row.
func section(out io.Writer, title, header string, rows []string) error {
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(out, title)
	w := newTable(out)
	w.println("  " + header)
	for _, r := range rows {
		w.println("  " + r)
	}
	return w.flush()
}

func printUser(out io.Writer, s state.UserStatus, now time.Time) error {
	w := newTable(out)
	w.println(printable.String(s.User))
	if s.LastSuccess.IsZero() && s.LastFailure.IsZero() && s.PendingSince.IsZero() && !s.InProgress && !s.Excluded {
		w.println("  no record\tnever replicated since this Redis was new, and no change waits\t")
		return w.flush()
	}
	if s.LastSuccess.IsZero() {
		w.println("  last success\t-\t")
	} else {
		kind := "incremental"
		if s.LastFull {
			kind = "full"
		}
		from := s.LastSuccessHost
		if from == "" {
			from = "default host"
		}
		w.printf("  last success\t%s\t%s from %s to %s, took %s\n", when(s.LastSuccess, now), kind, printable.String(from), printable.String(s.LastDestination), s.LastDuration.Round(time.Millisecond))
	}
	if s.LastFullStart.IsZero() {
		w.println("  last full sync\t-\t")
	} else {
		w.printf("  last full sync\t%s\tstarted then\n", when(s.LastFullStart, now))
	}
	if s.LastFailure.IsZero() {
		w.println("  last failure\t-\t")
	} else {
		code := ""
		if s.LastExitCode != 0 {
			code = fmt.Sprintf(" (exit code %d)", s.LastExitCode)
		}
		w.printf("  last failure\t%s\t%s%s: %s\n", when(s.LastFailure, now), printable.String(s.LastFailureClass), code, oneLine(s.LastError))
	}
	w.printf("  failures\t%d\tsince the last success\n", s.ConsecutiveFailures)
	switch {
	case s.Failed && s.Excluded:
		// Excluded by hand (SADD): its next change or sweep drops the mark.
		w.printf("  failed\tyes, at %s\texcluded: not retried\n", when(s.FailedSince, now))
	case s.Failed:
		w.printf("  failed\tyes, at %s\tthe sweep retries it\n", when(s.FailedSince, now))
	default:
		w.println("  failed\tno\t")
	}
	if s.PendingSince.IsZero() {
		w.println("  pending\tno\t")
	} else {
		w.printf("  pending\tsince %s\t%s\n", when(s.PendingSince, now), onHost(printable.String(s.PendingHost)))
	}
	if s.InProgress {
		from := s.InProgressHost
		if from == "" {
			from = "default host" // as the last success names it
		}
		w.printf("  in progress\tsince %s\tby %s, from %s\n", when(s.InProgressSince, now), printable.String(s.InProgressBy), printable.String(from))
	} else {
		w.println("  in progress\tno\t")
	}
	w.printf("  excluded\t%s\t\n", yesNo(s.Excluded))
	dests := make([]string, 0, len(s.States))
	for d := range s.States {
		dests = append(dests, d)
	}
	sort.Strings(dests)
	for _, d := range dests {
		w.printf("  dsync state\t%s\t%d bytes\n", printable.String(d), s.States[d])
	}
	return w.flush()
}

// table aligns tab-separated cells in columns, as text/tabwriter does,
// without the spaces it leaves after a row's last cell.
type table struct {
	out io.Writer
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newTable(out io.Writer) *table {
	t := &table{out: out}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 4, 2, ' ', 0)
	return t
}

func (t *table) printf(format string, a ...any) { fmt.Fprintf(t.tw, format, a...) }
func (t *table) println(a ...any)               { fmt.Fprintln(t.tw, a...) }

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	for line := range strings.Lines(t.buf.String()) {
		b.WriteString(strings.TrimRight(line, " \n"))
		b.WriteByte('\n')
	}
	t.buf.Reset()
	_, err := io.WriteString(t.out, b.String())
	return err
}

// onHost names the Dovecot host a change was seen on, when known.
func onHost(host string) string {
	if host == "" {
		return ""
	}
	return "on " + host
}

// oneLine keeps a table row on one line.
func oneLine(s string) string { return printable.String(strings.Join(strings.Fields(s), " ")) }
