package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDocs_DefaultsMatch keeps the default column of docs/configuration.md
// true: a default given there as one literal (`5m0s`) is the flag's default
// as -h prints it, and an empty cell is a flag without one. Defaults written
// as prose or taken from the environment (`$K_SINK`, "the host name") are
// not checked.
func TestDocs_DefaultsMatch(t *testing.T) {
	sections := readDocSections(t)
	for command, names := range docSectionsOf {
		fs := flagsOf(t, command)
		checked := 0
		for _, name := range names {
			for flagName, row := range sections[name] {
				f := fs.Lookup(flagName)
				if f == nil {
					continue // another command's flag in a shared section
				}
				if want, ok := literalDefault(row.def); ok {
					checked++
					if f.DefValue != want {
						t.Errorf("%s --%s: docs/configuration.md (%s) says default %q, -h says %q", command, flagName, name, row.def, f.DefValue)
					}
				}
			}
		}
		if checked == 0 {
			t.Errorf("%s: no default checked: the table pattern no longer matches", command)
		}
	}
}

// docSectionsOf names, for each command, the sections of
// docs/configuration.md whose tables hold its settings.
var docSectionsOf = map[string][]string{
	"ingest":    {sharedSection, "ingest"},
	"sync":      {sharedSection, "sync"},
	"broker":    {sharedSection, "broker"},
	"local":     {sharedSection, "sync", "ingest", "broker", "local"},
	"sweep":     {"sweep"},
	"replicate": {"replicate"},
	"loadgen":   {"loadgen"},
	"status":    {"status", "sync"},
	"explain":   {"explain"},
}

const sharedSection = "Settings every serving role shares"

// readDocSections reads docs/configuration.md's sections, failing t when
// one docSectionsOf names is missing.
func readDocSections(t *testing.T) map[string]map[string]docRow {
	t.Helper()
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := docSections(string(doc))
	for _, names := range docSectionsOf {
		for _, name := range names {
			if _, ok := sections[name]; !ok {
				t.Fatalf("docs/configuration.md has no section %q", name)
			}
		}
	}
	return sections
}

// docRow is a settings table's row: the environment variable and the
// default cell.
type docRow struct{ env, def string }

var docFlagRow = regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)` \\| `(DOVEWARDEN_[A-Z0-9_]+)` \\| ([^|]*)\\|")

// docSections maps each "## " or "### " heading of doc to its table rows
// by flag name.
func docSections(doc string) map[string]map[string]docRow {
	out := map[string]map[string]docRow{}
	for _, part := range regexp.MustCompile(`(?m)^#{2,3} `).Split(doc, -1)[1:] {
		heading, body, _ := strings.Cut(part, "\n")
		rows := map[string]docRow{}
		for _, m := range docFlagRow.FindAllStringSubmatch(body, -1) {
			rows[m[1]] = docRow{env: m[2], def: strings.TrimSpace(m[3])}
		}
		out[strings.TrimSpace(heading)] = rows
	}
	return out
}

// literalDefault returns the default a cell states as one literal: the
// cell empty, or one code span that is not an environment variable.
func literalDefault(cell string) (string, bool) {
	if cell == "" {
		return "", true
	}
	if len(cell) < 2 || cell[0] != '`' || cell[len(cell)-1] != '`' || strings.Count(cell, "`") != 2 {
		return "", false
	}
	v := cell[1 : len(cell)-1]
	if strings.HasPrefix(v, "$") {
		return "", false
	}
	return v, true
}
