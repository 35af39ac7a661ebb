package dovecot

import (
	"bufio"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The fixtures are real Dovecot 2.3 and 2.4 exports (see
// testdata/fixtures/README.md): every event Dovecot emitted during one
// scenario, one JSON object per line. wantChanges says which distinct
// changes (event command priority) each scenario must yield; every other
// event of the file must be dropped.
var wantChanges = map[string][]string{
	"imap-append":          {"imap_command_finished APPEND high"},
	"imap-append-catenate": {"imap_command_finished APPEND high"},
	"imap-copy":            {"imap_command_finished COPY high"},
	"imap-uid-copy":        {"imap_command_finished UID COPY high"},
	// MOVE also expunges from the source; the exported mail_expunged (any
	// service but doveadm) is a low change of its own.
	"imap-move":        {"imap_command_finished MOVE high", "mail_expunged MOVE low"},
	"imap-uid-move":    {"imap_command_finished UID MOVE high", "mail_expunged UID MOVE low"},
	"imap-replace":     {"imap_command_finished REPLACE high", "mail_expunged  low"},
	"imap-uid-replace": {"imap_command_finished UID REPLACE high", "mail_expunged  low"},
	"imap-create":      {"imap_command_finished CREATE low"},
	"imap-delete":      {"imap_command_finished DELETE low"},
	"imap-rename":      {"imap_command_finished RENAME low"},
	"imap-subscribe":   {"imap_command_finished SUBSCRIBE low"},
	"imap-unsubscribe": {"imap_command_finished UNSUBSCRIBE low"},
	"imap-store":       {"imap_command_finished STORE low"},
	"imap-uid-store":   {"imap_command_finished UID STORE low"},
	"imap-expunge":     {"imap_command_finished EXPUNGE low", "mail_expunged  low"},
	"imap-uid-expunge": {"imap_command_finished UID EXPUNGE low", "mail_expunged  low"},
	"imap-close":       {"imap_command_finished CLOSE low", "mail_expunged CLOSE low"},
	"imap-fetch-body":  {"imap_command_finished FETCH low"},
	"imap-setmetadata": {"imap_command_finished SETMETADATA low"},
	"imap-setacl":      {"imap_command_finished SETACL low"},
	"imap-deleteacl":   {"imap_command_finished DELETEACL low"},
	"imap-setquota":    {"imap_command_finished SETQUOTA low"},
	// Dovecot 2.4 answers NO [NOPERM] to a user's SETQUOTA. A command that
	// changes mail and answers NO may have done part of its work (a MOVE
	// commits each 1,000 messages): a low change, whatever the reason.
	"imap-setquota@2.4": {"imap_command_finished SETQUOTA low"},
	"lmtp-delivery":     {"mail_delivery_finished  high"},
	// A POP3 session's end is a change: Dovecot writes \Seen then.
	"pop3-dele":            {"mail_expunged  low", "mail_user_session_finished  low"},
	"pop3-dele@2.4":        {"pop3_command_finished DELE low", "pop3_command_finished QUIT low", "mail_expunged  low", "mail_user_session_finished  low"},
	"imap-create-fail":     {"imap_command_finished CREATE low"},
	"imap-bad":             nil,
	"imap-unknown-command": nil,
	"doveadm-sync":         nil,
	// Read-only commands.
	"imap-capability": nil, "imap-noop": nil, "imap-id": nil, "imap-enable": nil, "imap-namespace": nil,
	"imap-list": nil, "imap-lsub": nil, "imap-status": nil, "imap-select": nil, "imap-examine": nil,
	"imap-check": nil, "imap-fetch-body-peek": nil, "imap-uid-fetch": nil, "imap-search": nil,
	"imap-uid-search": nil, "imap-sort": nil, "imap-uid-sort": nil, "imap-thread": nil, "imap-uid-thread": nil,
	"imap-unselect": nil, "imap-idle": nil, "imap-getquotaroot": nil, "imap-getquota": nil, "imap-getacl": nil,
	"imap-myrights": nil, "imap-listrights": nil, "imap-getmetadata": nil, "imap-notify": nil,
	"imap-login": nil, "imap-logout": nil,
}

func TestFixtures_Classification(t *testing.T) {
	files, err := filepath.Glob("testdata/fixtures/*/*.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]int{}
	for _, file := range files {
		version := filepath.Base(filepath.Dir(file))
		scenario := strings.TrimSuffix(filepath.Base(file), ".jsonl")
		versions[version]++
		t.Run(version+"/"+scenario, func(t *testing.T) {
			want, ok := wantChanges[scenario+"@"+version]
			if !ok {
				want, ok = wantChanges[scenario]
			}
			if !ok {
				t.Fatalf("no expectation for scenario %s: add it to wantChanges", scenario)
			}
			got := classifyFile(t, file)
			if strings.Join(got, "\n") != strings.Join(sorted(want), "\n") {
				t.Errorf("changes:\n got %q\nwant %q", got, sorted(want))
			}
		})
	}
	for _, v := range []string{"2.3", "2.4"} {
		if versions[v] < 20 {
			t.Errorf("only %d fixtures for Dovecot %s", versions[v], v)
		}
	}
}

// classifyFile returns the distinct changes the events of file yield, and
// checks that each change names the fixtures' user.
func classifyFile(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		ev, err := Parse(sc.Bytes())
		if err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		c, reason := Classify(&ev)
		if reason != "" {
			continue
		}
		if name, _, _ := strings.Cut(c.User, "@"); name != "u1" || c.Host != "mail-a.test" || c.Time.IsZero() {
			t.Errorf("line %d: change %+v", n, c)
		}
		seen[c.Event+" "+c.Command+" "+string(c.Priority)] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	return sorted(out)
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
