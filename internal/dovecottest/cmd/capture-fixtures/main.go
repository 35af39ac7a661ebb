// Command capture-fixtures records real Dovecot event-exporter output, one
// file per protocol scenario, for Dovecot 2.3 and 2.4:
//
//	go run ./internal/dovecottest/cmd/capture-fixtures -out pkg/dovecot/testdata/fixtures
//
// For each version it starts a local HTTP listener that records every
// POSTed body, an instance named mail-a.test exporting every event to it
// (and a sync peer mail-b.test exporting to it as well), runs each scenario,
// waits until events stop arriving, and writes the bodies received during
// the scenario to OUT/<version>/<scenario>.jsonl, one per line, as received.
// It needs root (see package dovecottest).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

const command = "go run ./internal/dovecottest/cmd/capture-fixtures -out pkg/dovecot/testdata/fixtures"

// result is what one scenario produced.
type result struct {
	file      string
	exchanges []exchange
	events    int
	skipped   bool
}

// versionResult is what one Dovecot version produced.
type versionResult struct {
	version, serverVersion string
	results                []result
}

func main() {
	out := flag.String("out", "pkg/dovecot/testdata/fixtures", "output folder")
	versions := flag.String("versions", "2.3,2.4", "comma-separated Dovecot versions")
	quiet := flag.Duration("quiet", 300*time.Millisecond, "how long no event must arrive to end a scenario")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	var all []versionResult
	for _, v := range strings.Split(*versions, ",") {
		vr, err := captureVersion(ctx, v, filepath.Join(*out, v), *quiet)
		if err != nil {
			log.Fatalf("capture %s: %v", v, err)
		}
		all = append(all, vr)
	}
	if err := os.WriteFile(filepath.Join(*out, "README.md"), readme(all, *quiet), 0o644); err != nil {
		log.Fatalf("write README: %v", err)
	}
}

func captureVersion(ctx context.Context, version, dir string, quiet time.Duration) (versionResult, error) {
	vr := versionResult{version: version}
	rec, err := startRecorder()
	if err != nil {
		return vr, err
	}
	defer rec.close()
	// Fixed, neutral instance folders: their paths show up in events
	// (socket paths), so they must not depend on this machine.
	base := filepath.Join(os.TempDir(), "dovewarden-capture")
	if err := os.RemoveAll(base); err != nil {
		return vr, fmt.Errorf("clean %s: %w", base, err)
	}
	defer os.RemoveAll(base)
	users := map[string]string{user: password, user2: "pass2"}
	start := func(name string) (*dovecottest.Instance, error) {
		return dovecottest.Start(ctx, dovecottest.Options{Version: version, Name: name,
			Dir: filepath.Join(base, name), Users: users,
			ExporterURL: rec.URL(), ExportFilter: dovecottest.DefaultExportFilter,
			ExportTimeout: 30 * time.Second})
	}
	a, err := start("mail-a.test")
	if err != nil {
		return vr, err
	}
	defer a.Stop()
	b, err := start("mail-b.test")
	if err != nil {
		return vr, err
	}
	defer b.Stop()
	if vr.serverVersion, err = a.ServerVersion(ctx); err != nil {
		return vr, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return vr, fmt.Errorf("create %s: %w", dir, err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	for _, f := range old {
		_ = os.Remove(f)
	}
	e := &env{a: a, b: b}
	for _, sc := range append(imapScenarios(), otherScenarios()...) {
		var r scenarioOutput
		for attempt := 1; ; attempt++ {
			r, err = runScenario(ctx, e, rec, sc, quiet)
			if err == nil {
				break
			}
			if attempt == 3 {
				return vr, fmt.Errorf("%s: %w\n--- mail-a log ---\n%s", sc.file, err, a.Log())
			}
			log.Printf("%s %s: attempt %d failed, retrying: %v", version, sc.file, attempt, err)
		}
		if !r.skipped {
			if err := os.WriteFile(filepath.Join(dir, sc.file+".jsonl"), r.data, 0o644); err != nil {
				return vr, fmt.Errorf("write %s: %w", sc.file, err)
			}
		}
		log.Printf("%s %-24s %3d events %s", version, sc.file, r.events, lastReply(r.exchanges))
		vr.results = append(vr.results, r.result)
	}
	// The exporter never retries: a dropped event means an incomplete fixture.
	for _, in := range []*dovecottest.Instance{a, b} {
		for _, l := range strings.Split(in.Log(), "\n") {
			if strings.Contains(l, "stats") && (strings.Contains(l, "Error") || strings.Contains(l, "Warning")) {
				return vr, fmt.Errorf("%s dropped events: %s", in.Name, l)
			}
		}
	}
	return vr, nil
}

type scenarioOutput struct {
	result
	data []byte
}

func runScenario(ctx context.Context, e *env, rec *recorder, sc scenario, quiet time.Duration) (scenarioOutput, error) {
	out := scenarioOutput{result: result{file: sc.file}}
	e.log, e.uids, e.uidvalidity = nil, nil, ""
	if sc.setup != nil {
		if err := sc.setup(ctx, e); err != nil {
			return out, fmt.Errorf("setup: %w", err)
		}
	}
	rec.waitQuiet(ctx, quiet, 10*time.Second)
	m := rec.mark()
	runErr := sc.run(ctx, e)
	missing := rec.waitFor(ctx, m, sc.expect, 5*time.Second)
	rec.waitQuiet(ctx, quiet, 10*time.Second)
	bodies := rec.since(m)
	if sc.done != nil {
		_ = sc.done(ctx, e)
	}
	rec.waitQuiet(ctx, quiet, 10*time.Second)
	out.exchanges = e.log
	if runErr != nil {
		return out, runErr
	}
	if cmd, _ := e.unsupported(); cmd != "" && !sc.allowBad {
		out.skipped = true
		return out, nil
	}
	if len(missing) > 0 {
		return out, fmt.Errorf("events %v did not arrive", missing)
	}
	var buf bytes.Buffer
	for _, b := range bodies {
		buf.Write(b)
		if !bytes.HasSuffix(b, []byte("\n")) {
			buf.WriteByte('\n')
		}
	}
	out.events, out.data = len(bodies), buf.Bytes()
	return out, nil
}

func lastReply(xs []exchange) string {
	if len(xs) == 0 {
		return ""
	}
	return xs[len(xs)-1].cmd + " -> " + xs[len(xs)-1].reply
}
