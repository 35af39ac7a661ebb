package main

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// stateRe shortens dsync states in the README (the fixtures keep them).
var stateRe = regexp.MustCompile(`"state":"[^"]{16,}"`)

// readme renders OUT/README.md.
func readme(all []versionResult, quiet time.Duration) []byte {
	var b bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Dovecot event fixtures (captured, not written by hand)\n\n")
	p("Every `.jsonl` file here holds the HTTP bodies that a real Dovecot's event\n")
	p("exporter POSTed during one scenario, one JSON object per line, byte for\n")
	p("byte as received, in arrival order (which Dovecot does not guarantee to be\n")
	p("event order). Nothing was stripped or edited.\n\n")
	p("## How they were made\n\n")
	p("```\n%s\n```\n\n", command)
	p("(as root, from the repository root; it uses `internal/dovecottest`, which\n")
	p("installs Dovecot 2.3 from Debian bookworm and builds a Debian trixie tree\n")
	p("for 2.4 with mmdebstrap when missing).\n\n")
	p("Versions (`dovecot --version`):\n\n")
	for _, v := range all {
		p("- %s: `%s`\n", v.version, v.serverVersion)
	}
	p("\nPer version, the program starts a local HTTP listener on 127.0.0.1 that\n")
	p("records every POST and answers 200 at once, and two instances on loopback\n")
	p("ports: `mail-a.test`, where every scenario runs, and `mail-b.test`, the\n")
	p("destination of the doveadm sync. The hostnames are real: each Dovecot runs\n")
	p("in its own UTS namespace (`unshare --uts`, then `hostname mail-a.test`),\n")
	p("so the events' `hostname` field says `mail-a.test` or `mail-b.test`\n")
	p("(2.4 also runs chrooted into the trixie tree with `unshare --mount`).\n\n")
	p("Both instances export every event: one metric with `filter = %s` and\n", "event=*")
	p("`exporter_include = name hostname timestamps categories fields`; 2.3 uses\n")
	p("`format = json`, `format_args = time-rfc3339`, `transport = http-post`;\n")
	p("2.4 uses `driver = http-post`, `format = json`, `time_format = rfc3339`.\n")
	p("The exporter timeout is 30 s (the machine may be busy; Dovecot drops an\n")
	p("event that times out, and the program fails if an instance logged a drop).\n")
	p("The generated configs are the templates in `internal/dovecottest/templates`.\n\n")
	p("Before each scenario the program logs in as `u1` (password `pass`; `u2`\n")
	p("exists for ACL commands) and prepares what the scenario needs (at least\n")
	p("1 or 3 INBOX messages with \\Seen, \\Deleted and \\Flagged cleared, INBOX\n")
	p("selected, mailboxes created or removed); then it waits until no event has\n")
	p("arrived for %s, records the scenario, waits for %s of quiet again, and\n", quiet, quiet)
	p("keeps exactly the bodies that arrived in between. The LOGOUT that ends a\n")
	p("session is not recorded, except in `imap-logout.jsonl`. `doveadm-sync.jsonl`\n")
	p("holds the events of both sides (`hostname` tells them apart): mail-a.test\n")
	p("received the HTTP `sync` request, after a first full sync, a new message\n")
	p("and a flag change on mail-a.test and an expunge on mail-b.test.\n")
	p("Socket paths in the events point into `/tmp/dovewarden-capture/<host>/`,\n")
	p("the fixed instance folders the program uses.\n\n")
	p("Notes: SETQUOTA needs an admin user (`userdb_admin=yes` in the passwd-file)\n")
	p("and, on 2.3, `quota_set = dict:file:...`; Dovecot 2.3.19 crashes the imap\n")
	p("process (signal 11 in quota_set_resource) unless the quota root names its\n")
	p("namespace, hence `quota = count:User quota:ns=`. Dovecot 2.4 has no\n")
	p("`quota_set` any more and answers `NO [NOPERM] Permission denied`, which is\n")
	p("recorded as is. An unknown command is recorded in `imap-unknown-command.jsonl`\n")
	p("(`cmd_name` is `unknown` there); commands a version does not implement at\n")
	p("all are listed under Skipped below, with the server's reply.\n\n")
	for _, v := range all {
		p("## Dovecot %s\n\n", v.version)
		p("| file | events | command(s) sent | final reply |\n| --- | --- | --- | --- |\n")
		var skipped []result
		for _, r := range v.results {
			if r.skipped {
				skipped = append(skipped, r)
				continue
			}
			var cmds []string
			for _, x := range r.exchanges {
				cmds = append(cmds, "`"+cell(x.cmd)+"`")
			}
			last := ""
			if n := len(r.exchanges); n > 0 {
				last = "`" + cell(r.exchanges[n-1].reply) + "`"
			}
			p("| %s.jsonl | %d | %s | %s |\n", r.file, r.events, strings.Join(cmds, "<br>"), last)
		}
		p("\nSkipped (the server does not know the command):\n\n")
		if len(skipped) == 0 {
			p("- none\n")
		}
		for _, r := range skipped {
			for _, x := range r.exchanges {
				p("- %s: `%s` -> `%s`\n", r.file, cell(x.cmd), cell(x.reply))
			}
		}
		p("\n")
	}
	return b.Bytes()
}

func cell(s string) string {
	s = stateRe.ReplaceAllString(s, `"state":"..."`)
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "`", "'")
}
