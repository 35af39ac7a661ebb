package main

import (
	"context"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// TestDocs_EveryFlagIsDocumented keeps docs/configuration.md true: every
// flag of every serving command appears there with its environment name.
func TestDocs_EveryFlagIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ingest", "sync", "local", "broker", "loadgen", "sweep"} {
		fs := flagsOf(t, name)
		fs.VisitAll(func(f *flag.Flag) {
			for _, want := range []string{"`--" + f.Name + "`", "`" + config.EnvName(f.Name) + "`"} {
				if !strings.Contains(string(doc), want) {
					t.Errorf("%s: docs/configuration.md does not mention %s", name, want)
				}
			}
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
