// Package dovecotconfig holds tests for the Dovecot configuration snippets
// shipped in config/dovecot.
package dovecotconfig

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

var (
	cmdName    = regexp.MustCompile(`cmd_name=("[^"]+"|[A-Z-]+)`)
	reasonCode = regexp.MustCompile(`reason_code="([^"]+)"`)
)

// TestSnippets_ExportEveryChangingCommand keeps the exporter filters and the
// classification table in step: the filter names exactly the IMAP commands
// the table treats as changes, so Dovecot sends what ingest replicates on
// and little else.
func TestSnippets_ExportEveryChangingCommand(t *testing.T) {
	var want []string
	for name, c := range dovecot.IMAPCommands {
		if c.Effect != dovecot.ReadOnly {
			want = append(want, name)
		}
	}
	sort.Strings(want)
	for _, file := range []string{"events-2.3.conf", "events-2.4.conf"} {
		raw, imapFilter := snippetLine(t, file, "event=imap_command_finished")
		if imapFilter == "" {
			t.Fatalf("%s: no imap_command_finished filter", file)
		}
		seen := map[string]bool{}
		for _, m := range cmdName.FindAllStringSubmatch(imapFilter, -1) {
			seen[strings.Trim(m[1], `"`)] = true
		}
		var got []string
		for name := range seen {
			got = append(got, name)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s exports\n %v\nbut the table's changing commands are\n %v", file, got, want)
		}
		if !strings.Contains(imapFilter, "NOT tagged_reply_state=BAD") {
			t.Errorf("%s: commands refused before they ran (BAD) are exported too", file)
		}
		for _, kind := range []string{"event=mail_delivery_finished", `(event=mail_expunged OR event=mail_user_session_finished) AND category="service:pop3"`,
			`event=mail_expunged AND reason_code="storage:autoexpunge"`,
			`event=mail_expunged AND category="service:doveadm" AND reason_code="doveadm:cmd_move"`,
			"unix_listener stats-writer {\n    mode = 0666"} {
			if !strings.Contains(string(raw), kind) {
				t.Errorf("%s does not export %s", file, kind)
			}
		}
	}
}

// TestSnippets_ExportEveryChangingDoveadmCommand: the doveadm filter names
// exactly the reason codes of the table's doveadm commands, and never
// dsync's own (which would loop).
func TestSnippets_ExportEveryChangingDoveadmCommand(t *testing.T) {
	var want []string
	for name := range dovecot.DoveadmCommands {
		want = append(want, dovecot.DoveadmReasonCode(name))
	}
	sort.Strings(want)
	for _, file := range []string{"events-2.3.conf", "events-2.4.conf"} {
		_, filter := snippetLine(t, file, `event=mail_user_session_finished AND category="service:doveadm"`)
		if !strings.Contains(filter, `event=mail_user_session_finished AND category="service:doveadm" AND (`) {
			t.Fatalf("%s: no doveadm session filter: %q", file, filter)
		}
		var got []string
		for _, m := range reasonCode.FindAllStringSubmatch(filter, -1) {
			got = append(got, m[1])
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s exports\n %v\nbut the table's doveadm commands are\n %v", file, got, want)
		}
	}
}

// TestSnippets_ExportEveryChangingSieveCommand: the ManageSieve filter
// names exactly the commands the table treats as changes.
func TestSnippets_ExportEveryChangingSieveCommand(t *testing.T) {
	var want []string
	for name, c := range dovecot.ManageSieveCommands {
		if c.Effect != dovecot.ReadOnly {
			want = append(want, name)
		}
	}
	sort.Strings(want)
	for _, file := range []string{"events-2.3.conf", "events-2.4.conf"} {
		_, filter := snippetLine(t, file, "event="+dovecot.ManageSieveCommandFinished)
		if filter == "" {
			t.Fatalf("%s: no %s filter", file, dovecot.ManageSieveCommandFinished)
		}
		var got []string
		for _, m := range cmdName.FindAllStringSubmatch(filter, -1) {
			got = append(got, strings.Trim(m[1], `"`))
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s exports\n %v\nbut the table's changing ManageSieve commands are\n %v", file, got, want)
		}
	}
}

// snippetLine reads a snippet and returns it and its last line holding
// marker ("" if none).
func snippetLine(t *testing.T, file, marker string) (raw []byte, line string) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.Contains(l, marker) {
			line = l
		}
	}
	return raw, line
}
