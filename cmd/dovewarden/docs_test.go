package main

import (
	"context"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// TestDocs_EveryFlagIsDocumented keeps docs/configuration.md true: every
// flag of every command but the demo's has a row, with its environment
// name, in a table of one of the command's sections there.
func TestDocs_EveryFlagIsDocumented(t *testing.T) {
	sections := readDocSections(t)
	for command, names := range docSectionsOf {
		flagsOf(t, command).VisitAll(func(f *flag.Flag) {
			for _, name := range names {
				if row, ok := sections[name][f.Name]; ok {
					if row.env != config.EnvName(f.Name) {
						t.Errorf("%s --%s: docs/configuration.md (%s) names %s, want %s", command, f.Name, name, row.env, config.EnvName(f.Name))
					}
					return
				}
			}
			t.Errorf("%s --%s: no row in docs/configuration.md's sections %q", command, f.Name, names)
		})
	}
}

// flagsOf runs a command with -h and collects the flags it declared.
func flagsOf(t *testing.T, name string) *flag.FlagSet {
	t.Helper()
	var got *flag.FlagSet
	orig := newFlagSet
	newFlagSet = func(n string, env *environment) *flag.FlagSet {
		got = orig(n, env)
		return got
	}
	defer func() { newFlagSet = orig }()
	env, _, _ := testEnv(nil, "")
	_ = run(context.Background(), env, []string{name, "-h"})
	if got == nil {
		t.Fatalf("%s declared no flags", name)
	}
	return got
}

// TestManifests_SetOnlySettings: every DOVEWARDEN_* variable the shipped
// Knative Services, func.yaml files and systemd environment file set is a
// setting of the command they run, so none is silently ignored.
func TestManifests_SetOnlySettings(t *testing.T) {
	envName := regexp.MustCompile(`(?m)^\s*(?:- name: |#?)(DOVEWARDEN_[A-Z0-9_]+)\b`)
	for file, command := range map[string]string{
		"../../config/knative/ingest.yaml":    "ingest",
		"../../config/knative/sync-high.yaml": "sync",
		"../../config/knative/sync-low.yaml":  "sync",
		"../../functions/ingest/func.yaml":    "ingest",
		"../../functions/sync/func.yaml":      "sync",
		"../../config/systemd/local.env":      "local",
	} {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(file, ".yaml") && strings.Contains(string(text), "args: [") && !strings.Contains(string(text), `args: ["`+command+`"]`) {
			t.Errorf("%s runs another command than %s", file, command)
		}
		fs := flagsOf(t, command)
		var environ []string
		for _, m := range envName.FindAllStringSubmatch(string(text), -1) {
			environ = append(environ, m[1]+"=")
		}
		if len(environ) == 0 {
			t.Errorf("%s sets no DOVEWARDEN_* variable: the pattern no longer matches it", file)
		}
		for _, name := range config.Unused(fs, environ) {
			t.Errorf("%s sets %s, which is no setting of dovewarden %s", file, name, command)
		}
	}
}

// TestLocal_IngestTakesIngestsDefaultBody: in local mode ingest's body
// limit is sync's --max-body; its default must be ingest's own, which
// fits a long command's event.
func TestLocal_IngestTakesIngestsDefaultBody(t *testing.T) {
	local, ingest := flagsOf(t, "local").Lookup("max-body"), flagsOf(t, "ingest").Lookup("max-body")
	if local == nil || ingest == nil || local.DefValue != ingest.DefValue {
		t.Errorf("--max-body default: local %v, ingest %v", local, ingest)
	}
}
