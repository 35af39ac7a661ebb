package dovecotconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// concurrentRounds is how many rounds of changes and concurrent dsyncs
// TestSnippets_RealDovecot_SharedMailboxConcurrentDsyncs runs.
const concurrentRounds = 30

// message is one message of a mailboxView. id (Message-ID) and size are
// empty when read over IMAP.
type message struct {
	uid, guid, id, size string
	flags               []string
}

// line renders m, without \Seen when seen is false.
func (m message) line(seen bool) string {
	var flags []string
	for _, f := range m.flags {
		if seen || f != `\Seen` {
			flags = append(flags, f)
		}
	}
	return fmt.Sprintf("uid=%s guid=%s id=%s size=%s flags=[%s]", m.uid, m.guid, m.id, m.size, strings.Join(flags, " "))
}

// mailboxView is what one user sees of one mailbox on one server: its
// status (GUID, UIDVALIDITY, message count) and its messages, each with
// the flags as that user sees them (in the shared namespace \Seen is the
// user's own: INDEXPVT).
type mailboxView struct {
	status   string
	messages []message
}

// viewMailbox reads user's mailbox mb on in with doveadm (mailbox status,
// fetch), which changes nothing.
func viewMailbox(ctx context.Context, in *dovecottest.Instance, user, mb string) (mailboxView, error) {
	st, err := in.Doveadm(ctx, "-f", "flow", "mailbox", "status", "-u", user, "guid uidvalidity messages", mb)
	if err != nil {
		return mailboxView{}, err
	}
	// Not the text: Dovecot 2.4.1's doveadm -f json fetch of text now and
	// then panicked (json_generate_object_close: assertion failed). The
	// GUID (dsync copies it) and the size tell a message.
	out, err := in.Doveadm(ctx, "-f", "json", "fetch", "-u", user, "uid guid flags hdr.message-id size.virtual", "mailbox", mb, "all")
	if err != nil {
		return mailboxView{}, err
	}
	var msgs []map[string]string
	if err := json.Unmarshal(out, &msgs); err != nil {
		return mailboxView{}, fmt.Errorf("doveadm fetch on %s: %w: %.200s", in.Name, err, out)
	}
	v := mailboxView{status: strings.TrimSpace(string(st))}
	for _, m := range msgs {
		v.messages = append(v.messages, message{uid: m["uid"], guid: m["guid"], id: strings.TrimSpace(m["hdr.message-id"]),
			size: m["size.virtual"], flags: sortedFlags(strings.Fields(m["flags"]))})
	}
	return v, nil
}

var (
	fetchUID   = regexp.MustCompile(`\bUID (\d+)`)
	fetchGUID  = regexp.MustCompile(`\bX-GUID (\S+?)[ )]`)
	fetchFlags = regexp.MustCompile(`\bFLAGS \(([^)]*)\)`)
	examineVal = regexp.MustCompile(`\[UIDVALIDITY (\d+)\]`)
)

// viewIMAP reads mailbox mb over the IMAP session s (EXAMINE, FETCH
// without bodies: read-only): faster than viewMailbox, for every round.
func viewIMAP(ctx context.Context, s *dovecottest.IMAPSession, mb string) (mailboxView, error) {
	var v mailboxView
	untagged, tagged, err := s.Cmd(ctx, "EXAMINE "+dovecottest.Quote(mb))
	if err != nil || !dovecottest.IsOK(tagged) {
		return v, fmt.Errorf("EXAMINE %s: %v %s", mb, err, tagged)
	}
	for _, l := range untagged {
		if m := examineVal.FindStringSubmatch(l); m != nil {
			v.status = "uidvalidity=" + m[1]
		}
	}
	if untagged, tagged, err = s.Cmd(ctx, "UID FETCH 1:* (FLAGS X-GUID)"); err != nil || !dovecottest.IsOK(tagged) {
		return v, fmt.Errorf("FETCH %s: %v %s", mb, err, tagged)
	}
	for _, l := range untagged {
		uid, guid, flags := fetchUID.FindStringSubmatch(l), fetchGUID.FindStringSubmatch(l), fetchFlags.FindStringSubmatch(l)
		if uid == nil || guid == nil || flags == nil {
			continue
		}
		v.messages = append(v.messages, message{uid: uid[1], guid: guid[1], flags: sortedFlags(strings.Fields(flags[1]))})
	}
	v.status += fmt.Sprintf(" messages=%d", len(v.messages))
	if _, tagged, err = s.Cmd(ctx, "UNSELECT"); err != nil || !dovecottest.IsOK(tagged) {
		return v, fmt.Errorf("UNSELECT %s: %v %s", mb, err, tagged)
	}
	return v, nil
}

// sortedFlags sorts flags, without \Recent (a session's flag).
func sortedFlags(flags []string) []string {
	flags = slices.DeleteFunc(flags, func(f string) bool { return strings.EqualFold(f, `\Recent`) })
	sort.Strings(flags)
	return flags
}

// compareViews says how replica differs from primary, \Seen left out
// unless seen: messages (by GUID) missing or extra on the replica, GUIDs
// and Message-IDs held more than once on either side, messages whose
// UID, size or flags differ, and a different status. Empty: the same.
func compareViews(primary, replica mailboxView, seen bool) []string {
	var out []string
	index := func(side string, v mailboxView) map[string]string {
		byGUID, byID := map[string]string{}, map[string]int{}
		for _, m := range v.messages {
			if _, dup := byGUID[m.guid]; dup {
				out = append(out, fmt.Sprintf("%s: GUID %s twice", side, m.guid))
			}
			byGUID[m.guid] = m.line(seen)
			if m.id != "" {
				byID[m.id]++
			}
		}
		for id, n := range byID {
			if n > 1 {
				out = append(out, fmt.Sprintf("%s: Message-ID %s %d times", side, id, n))
			}
		}
		return byGUID
	}
	p, r := index("primary", primary), index("replica", replica)
	for g, l := range p {
		rl, ok := r[g]
		switch {
		case !ok:
			out = append(out, "missing on the replica: "+l)
		case rl != l:
			out = append(out, fmt.Sprintf("differs: primary %s; replica %s", l, rl))
		}
	}
	for g, l := range r {
		if _, ok := p[g]; !ok {
			out = append(out, "extra on the replica: "+l)
		}
	}
	if primary.status != replica.status {
		out = append(out, fmt.Sprintf("status: primary %q, replica %q", primary.status, replica.status))
	}
	sort.Strings(out)
	return out
}

// dsyncOutcome is one dsync's result: "ok", "exit N" or the error's kind,
// with what doveadm said (through doveadm-exec its standard error).
type dsyncOutcome struct {
	user, transport string
	result, detail  string
	began, ended    time.Time
}

func outcomeOf(err error) (result, detail string) {
	if err == nil {
		return "ok", ""
	}
	var de *doveadm.Error
	if errors.As(err, &de) {
		if de.Kind == doveadm.KindExitCode {
			return fmt.Sprintf("exit %d", de.ExitCode), de.Detail
		}
		return string(de.Kind), de.Detail
	}
	return "error", err.Error()
}

// logVarying is what varies between two log lines of one kind (the
// time, numbers, GUIDs, ids in angle brackets), for logProblems.
var logVarying = regexp.MustCompile(`^\S+ \S+ \S+ |[0-9a-f]{32}|[0-9]+|<[^>]*>`)

// logProblems counts the error and warning lines of in's log by kind.
func logProblems(in *dovecottest.Instance) map[string]int {
	n := map[string]int{}
	for _, l := range strings.Split(in.Log(), "\n") {
		for _, level := range []string{"Warning:", "Error:", "Fatal:", "Panic:"} {
			if strings.Contains(l, level) {
				n[logVarying.ReplaceAllString(l, "#")]++
				break
			}
		}
	}
	return n
}

// sharedPair starts a primary and a replica of version with sharedConfig
// and users u1 and u2, and on the primary u2's mailbox Shared1 that u1 may
// read, write and expunge in.
func sharedPair(t *testing.T, ctx context.Context, version string) (a, b *dovecottest.Instance) {
	t.Helper()
	users := map[string]string{"u1": "pass", "u2": "pass"}
	da, db := sharedDir(t), sharedDir(t)
	a = dovecottest.StartT(t, dovecottest.Options{Version: version, Name: "mail-a.test", Dir: da, Users: users,
		ExtraConfig: sharedConfig(version, da)})
	b = dovecottest.StartT(t, dovecottest.Options{Version: version, Name: "mail-b.test", Dir: db, Users: users,
		ExtraConfig: sharedConfig(version, db)})
	for _, args := range [][]string{
		{"mailbox", "create", "-u", "u2", "Shared1"},
		{"acl", "set", "-u", "u2", "Shared1", "user=u1", "lookup", "read", "write", "write-seen", "write-deleted", "insert", "expunge", "post"},
	} {
		if out, err := a.Doveadm(ctx, args...); err != nil {
			t.Fatalf("%s: %v (%s)", a.Name, err, out)
		}
	}
	return a, b
}

// TestSnippets_RealDovecot_SharedMailboxConcurrentDsyncs: u1's dsync
// (all namespaces, as sync runs it) and u2's both copy u2's Shared1,
// shared with u1, and the per-user locks (dovewarden's, dsync's) let them
// run at once. For concurrentRounds rounds, u1 (through the shared
// namespace) and u2 append to, flag and expunge in Shared1 on the
// primary, and then u1's and u2's dsyncs start at the same moment,
// alternately through doveadm-http and doveadm-exec. Measured with 2.3
// and 2.4: every one of them succeeds, and after each round the
// replica's Shared1 holds the primary's messages (GUIDs, UIDs, no
// duplicates) and flags, except \Seen: a message that one user's dsync
// copied first reaches the replica without the other user's \Seen (u2's,
// or u1's own private one), and that user's next incremental dsyncs need
// not bring it (TestSnippets_RealDovecot_SharedMailboxSeenNeedsAFullDsync); the same
// happens with the two dsyncs one after the other. After both users'
// dsyncs once more, one after the other, the replica holds all of the
// primary's mail (\Seen aside); after a full dsync of each, \Seen too.
func TestSnippets_RealDovecot_SharedMailboxConcurrentDsyncs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running Dovecot test instances needs root (CI runs as root)")
	}
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			// A bound against a hang, not a timing: with the test
			// command's other steps beside it, one version took over
			// 3 minutes, where alone it takes one.
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			a, b := sharedPair(t, ctx, version)
			bin, err := a.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			transports := []struct {
				name string
				tr   doveadm.Transport
			}{
				{doveadm.TransportHTTP, doveadm.NewHTTP(nil, time.Minute)},
				{doveadm.TransportExec, doveadm.NewExec(bin, time.Minute)},
			}
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword,
				Destination: b.Destination, Config: a.ConfigPath}
			// Each user's dsync state, kept as sync keeps it: the new one
			// after a success, the old one after a failure.
			states := map[string]string{"u1": "", "u2": ""}
			var statesMu sync.Mutex
			dsync := func(transport int, user string, full bool) dsyncOutcome {
				statesMu.Lock()
				st := states[user]
				statesMu.Unlock()
				o := dsyncOutcome{user: user, transport: transports[transport].name, began: time.Now()}
				res, err := transports[transport].tr.Sync(ctx, ep, doveadm.SyncRequest{User: user, Destination: b.Destination,
					State: st, Full: full || st == "", LockTimeout: 30 * time.Second})
				o.ended = time.Now()
				o.result, o.detail = outcomeOf(err)
				if err == nil {
					statesMu.Lock()
					states[user] = res.State
					statesMu.Unlock()
				}
				return o
			}
			// u2's first, which puts Shared1 on the replica for u1's.
			for _, u := range []string{"u2", "u1"} {
				if o := dsync(0, u, false); o.result != "ok" {
					t.Fatalf("%s's first dsync: %s %s", u, o.result, o.detail)
				}
			}

			login := func(in *dovecottest.Instance, user string) *dovecottest.IMAPSession {
				t.Helper()
				s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, user, "pass")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			}
			s1, s2 := login(a, "u1"), login(a, "u2")
			cmd := func(s *dovecottest.IMAPSession, c string) []string {
				t.Helper()
				untagged, tagged, err := s.Cmd(ctx, c)
				if err != nil || !dovecottest.IsOK(tagged) {
					t.Fatalf("%s: %v %s", c, err, tagged)
				}
				return untagged
			}
			uids := func(s *dovecottest.IMAPSession, mb string) []string {
				t.Helper()
				cmd(s, "SELECT "+dovecottest.Quote(mb))
				for _, l := range cmd(s, "UID SEARCH ALL") {
					if rest, ok := strings.CutPrefix(l, "* SEARCH"); ok {
						return strings.Fields(rest)
					}
				}
				t.Fatalf("no UIDs in %s", mb)
				return nil
			}
			appendMsg := func(s *dovecottest.IMAPSession, mb, flags, subject string) {
				t.Helper()
				if tagged, err := s.Append(ctx, mb, flags, dovecottest.TestMessage(subject, "body of "+subject)); err != nil {
					t.Fatalf("APPEND %s: %v %s", mb, err, tagged)
				}
			}
			rnd := rand.New(rand.NewPCG(1, 2))
			pick := func(l []string) string { return l[rnd.IntN(len(l))] }
			for i := range 4 {
				appendMsg(s2, "Shared1", "", fmt.Sprintf("seed %d", i))
			}

			// u2's Shared1 as u2 and as u1 sees it, read over IMAP on
			// both servers after every round.
			shared := [][2]string{{"u2", "Shared1"}, {"u1", "shared/u2/Shared1"}}
			readers := map[*dovecottest.Instance][]*dovecottest.IMAPSession{
				a: {login(a, "u2"), login(a, "u1")}, b: {login(b, "u2"), login(b, "u1")},
			}
			compareRound := func(seen bool) []string {
				t.Helper()
				var out []string
				for i, v := range shared {
					pa, err := viewIMAP(ctx, readers[a][i], v[1])
					if err != nil {
						t.Fatal(err)
					}
					pb, err := viewIMAP(ctx, readers[b][i], v[1])
					if err != nil {
						t.Fatal(err)
					}
					for _, d := range compareViews(pa, pb, seen) {
						out = append(out, v[0]+"'s "+v[1]+": "+d)
					}
				}
				return out
			}

			tally := map[string]int{}
			overlapped, seenRounds := 0, 0
			var longest time.Duration
			began := time.Now()
			for r := range concurrentRounds {
				appendMsg(s1, "shared/u2/Shared1", "", fmt.Sprintf("r%d from u1 a", r))
				appendMsg(s1, "shared/u2/Shared1", `(\Flagged)`, fmt.Sprintf("r%d from u1 b", r))
				appendMsg(s2, "Shared1", "", fmt.Sprintf("r%d from u2", r))
				appendMsg(s1, "INBOX", "", fmt.Sprintf("r%d u1 inbox", r))
				appendMsg(s2, "INBOX", "", fmt.Sprintf("r%d u2 inbox", r))
				l := uids(s1, "shared/u2/Shared1")
				cmd(s1, fmt.Sprintf(`UID STORE %s +FLAGS (\Seen $Label1)`, pick(l)))
				cmd(s1, fmt.Sprintf(`UID STORE %s -FLAGS ($Label1 \Flagged)`, pick(l)))
				if r%3 == 0 {
					cmd(s1, fmt.Sprintf(`UID STORE %s +FLAGS (\Deleted)`, pick(l)))
					cmd(s1, "EXPUNGE")
				}
				l = uids(s2, "Shared1")
				cmd(s2, fmt.Sprintf(`UID STORE %s +FLAGS (\Answered \Seen)`, pick(l)))
				cmd(s2, fmt.Sprintf(`UID STORE %s -FLAGS (\Flagged)`, pick(l)))
				cmd(s2, fmt.Sprintf(`UID STORE %s +FLAGS (\Deleted)`, pick(l)))
				cmd(s2, "EXPUNGE")
				cmd(s1, "UNSELECT")
				cmd(s2, "UNSELECT")

				tr := r % 2
				start := make(chan struct{})
				res := make([]dsyncOutcome, 2)
				var wg sync.WaitGroup
				for i, u := range []string{"u1", "u2"} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						res[i] = dsync(tr, u, false)
					}()
				}
				close(start)
				wg.Wait()
				if res[0].began.Before(res[1].ended) && res[1].began.Before(res[0].ended) {
					overlapped++
				}
				for _, o := range res {
					tally[o.transport+" "+o.user+" "+o.result]++
					longest = max(longest, o.ended.Sub(o.began))
					// Only successes were seen, with 2.3 and 2.4.
					if o.result != "ok" {
						t.Errorf("round %d: %s's dsync (%s): %s after %s: %s", r, o.user, o.transport, o.result,
							o.ended.Sub(o.began).Round(time.Millisecond), o.detail)
					}
				}
				if d := compareRound(false); len(d) > 0 {
					t.Errorf("round %d: the replica's Shared1 differs (\\Seen aside):\n%s", r, strings.Join(d, "\n"))
				}
				if d := compareRound(true); len(d) > 0 {
					seenRounds++
					t.Logf("round %d: \\Seen differs:\n%s", r, strings.Join(d, "\n"))
				}
			}
			var counts []string
			for k, n := range tally {
				counts = append(counts, fmt.Sprintf("%s: %d", k, n))
			}
			sort.Strings(counts)
			t.Logf("%d rounds in %s; the two dsyncs overlapped in %d (the longest took %s); \\Seen differed after %d; dsyncs: %s",
				concurrentRounds, time.Since(began).Round(time.Millisecond), overlapped, longest.Round(time.Millisecond), seenRounds,
				strings.Join(counts, ", "))
			// What the test is for: dsyncs of one shared mailbox at once.
			// Started at the same moment, nearly every pair overlaps (all
			// 240 measured); half is room for a busy machine.
			if overlapped < concurrentRounds/2 {
				t.Errorf("the two dsyncs overlapped in %d of %d rounds: the test did not run them at once", overlapped, concurrentRounds)
			}

			// Every mailbox of both users, read with doveadm.
			all := append(shared, [2]string{"u1", "INBOX"}, [2]string{"u2", "INBOX"})
			compareAll := func(seen bool) []string {
				t.Helper()
				var out []string
				for _, v := range all {
					pa, err := viewMailbox(ctx, a, v[0], v[1])
					if err != nil {
						t.Fatal(err)
					}
					pb, err := viewMailbox(ctx, b, v[0], v[1])
					if err != nil {
						t.Fatal(err)
					}
					if len(pa.messages) == 0 {
						t.Fatalf("%s's %s is empty on the primary", v[0], v[1])
					}
					for _, d := range compareViews(pa, pb, seen) {
						out = append(out, v[0]+"'s "+v[1]+": "+d)
					}
				}
				return out
			}
			// Once more, one after the other, as a retry or the sweep
			// would: incremental, then full.
			for _, full := range []bool{false, true} {
				for _, u := range []string{"u2", "u1"} {
					if o := dsync(0, u, full); o.result != "ok" {
						t.Fatalf("%s's dsync after the rounds (full %v): %s %s", u, full, o.result, o.detail)
					}
				}
				if d := compareAll(full); len(d) > 0 {
					t.Errorf("after both dsyncs one after the other (full %v), the replica differs (\\Seen compared: %v):\n%s",
						full, full, strings.Join(d, "\n"))
				}
				if d := compareAll(true); !full && len(d) > 0 {
					t.Logf("after both incremental dsyncs one after the other, \\Seen differs:\n%s", strings.Join(d, "\n"))
				} else if !full {
					t.Log("after both incremental dsyncs one after the other, \\Seen is the same too")
				}
			}
			for _, in := range []*dovecottest.Instance{a, b} {
				problems := logProblems(in)
				for l, n := range problems {
					t.Logf("%s's log, %d times: %s", in.Name, n, l)
				}
				if len(problems) == 0 {
					t.Logf("%s's log: no warning, no error", in.Name)
				}
			}
		})
	}
}

// TestSnippets_RealDovecot_SharedMailboxSeenNeedsAFullDsync: a new
// message in u2's Shared1 that one user's dsync copies to the replica
// first should reach it with the other user's \Seen after that user's
// incremental dsync: u2's (the owner's) after u1's dsync copied it,
// u1's own (private in the shared namespace) after u2's dsync copied it. It does not, with Dovecot
// 2.3 and 2.4 alike, with the dsyncs one after the other, every time (3
// runs of each): the replica has the message without that \Seen. Later
// incremental dsyncs need not bring it either (in a run of
// TestSnippets_RealDovecot_SharedMailboxConcurrentDsyncs u2's \Seen on one
// message stayed missing through u2's 13 later ones); that user's full
// dsync (the periodic full sync, --full-sync-interval) does. The test
// logs what the incremental dsync left, and requires the full one to
// repair it.
func TestSnippets_RealDovecot_SharedMailboxSeenNeedsAFullDsync(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running Dovecot test instances needs root (CI runs as root)")
	}
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			a, b := sharedPair(t, ctx, version)
			http := doveadm.NewHTTP(nil, time.Minute)
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword,
				Destination: b.Destination}
			states := map[string]string{}
			dsync := func(user string) {
				t.Helper()
				res, err := http.Sync(ctx, ep, doveadm.SyncRequest{User: user, Destination: b.Destination,
					State: states[user], Full: states[user] == "", LockTimeout: 30 * time.Second})
				if err != nil {
					t.Fatalf("%s's dsync: %v", user, err)
				}
				states[user] = res.State
			}
			dsync("u2")
			dsync("u1")
			mailbox := map[string]string{"u1": "shared/u2/Shared1", "u2": "Shared1"}
			for _, c := range []struct{ appender, seer, first string }{
				{"u1", "u2", "u1"}, // u2's \Seen on u1's message, u1's dsync first
				{"u2", "u1", "u2"}, // u1's private \Seen on u2's message, u2's dsync first
			} {
				s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, c.appender, "pass")
				if err != nil {
					t.Fatal(err)
				}
				if tagged, err := s.Append(ctx, mailbox[c.appender], "", dovecottest.TestMessage("from "+c.appender, "x")); err != nil {
					t.Fatalf("APPEND: %v %s", err, tagged)
				}
				s.Close()
				if s, err = dovecottest.LoginIMAP(ctx, a.IMAPAddr, c.seer, "pass"); err != nil {
					t.Fatal(err)
				}
				for _, cmd := range []string{"SELECT " + dovecottest.Quote(mailbox[c.seer]), `STORE * +FLAGS (\Seen)`, "UNSELECT"} {
					if _, tagged, err := s.Cmd(ctx, cmd); err != nil || !dovecottest.IsOK(tagged) {
						t.Fatalf("%s: %v %s", cmd, err, tagged)
					}
				}
				s.Close()
				dsync(c.first)
				dsync(c.seer)
				pa, err := viewMailbox(ctx, a, c.seer, mailbox[c.seer])
				if err != nil {
					t.Fatal(err)
				}
				pb, err := viewMailbox(ctx, b, c.seer, mailbox[c.seer])
				if err != nil {
					t.Fatal(err)
				}
				if d := compareViews(pa, pb, true); len(d) > 0 {
					t.Logf("%s's \\Seen on %s's new message after %s's dsync, then %s's incremental: the replica differs (a Dovecot limitation, docs/sync.md):\n%s",
						c.seer, c.appender, c.first, c.seer, strings.Join(d, "\n"))
				} else {
					t.Logf("%s's \\Seen on %s's new message after %s's dsync, then %s's incremental: the replica has it", c.seer, c.appender, c.first, c.seer)
				}
				states[c.seer] = "" // a full dsync
				dsync(c.seer)
				if pb, err = viewMailbox(ctx, b, c.seer, mailbox[c.seer]); err != nil {
					t.Fatal(err)
				}
				if d := compareViews(pa, pb, true); len(d) > 0 {
					t.Errorf("%s's \\Seen on %s's new message after %s's full dsync: the replica still differs:\n%s",
						c.seer, c.appender, c.seer, strings.Join(d, "\n"))
				}
			}
		})
	}
}
