package validate

// `func build` and `func deploy` with the host builder, as docs/deployment.md
// gives them, compile what the func CLI compiles: its scaffolding, a main
// package of a module `s` written to FUNCTION/.func/build, which requires
// the function's module (replaced by ./f, a link to the function folder),
// takes its requirements, and hands f.New() to func-go (knative/func
// pkg/scaffolding Write and patchScaffolding, templates/go/scaffolding;
// pkg/oci go_builder.go runs `go build` there with CGO_ENABLED=0 and the
// caller's environment).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// funcGo is the func-go release the func CLI's Go scaffolding uses.
const funcGo = "knative.dev/func-go v0.22.0"

// scaffoldMain is the scaffolding's main.go for an instanced function, by
// invoke: func-go's HTTP or CloudEvents service around f.New() (and, for
// CloudEvents, its Kafka transport when FUNC_TRANSPORT=kafka).
var scaffoldMain = map[string]string{
	"http": `package main

import (
	"fmt"
	"os"

	"knative.dev/func-go/http"

	f %q
)

func main() {
	if err := http.Start(f.New()); err != nil {
		fmt.Fprintln(os.Stderr, err.Error())
		os.Exit(1)
	}
}
`,
	"cloudevent": `package main

import (
	"fmt"
	"os"

	ce "knative.dev/func-go/cloudevents"
	"knative.dev/func-go/kafka"

	f %q
)

func main() {
	var err error
	if os.Getenv("FUNC_TRANSPORT") == "kafka" {
		err = kafka.Start(f.New())
	} else {
		err = ce.Start(f.New())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err.Error())
		os.Exit(1)
	}
}
`,
}

// goMod is what `go mod edit -json` says of a go.mod.
type goMod struct {
	Module  struct{ Path string }
	Go      string
	Require []struct{ Path, Version string }
}

func readGoMod(t *testing.T, dir string) goMod {
	t.Helper()
	cmd := exec.Command("go", "mod", "edit", "-json")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: go mod edit -json: %v", dir, err)
	}
	var m goMod
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// signature is func's detection (pkg/scaffolding detectors.go): a
// package-level New in any .go file of the folder makes the function
// instanced, a package-level Handle static; never both.
func signature(t *testing.T, dir string) (instanced bool) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var static bool
	for _, file := range files {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.SkipObjectResolution)
		if err != nil {
			continue
		}
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil {
				instanced = instanced || fd.Name.Name == "New"
				static = static || fd.Name.Name == "Handle"
			}
		}
	}
	if instanced == static {
		t.Fatalf("%s: func finds %s", dir, map[bool]string{true: "both a static Handle and a New", false: "no Handle and no New"}[static])
	}
	return instanced
}

// TestFuncBuild_HostBuilderBuildsEachFunction: for each function folder,
// write func's scaffolding where func writes it and build it as func's
// host builder does, in the environment docs/deployment.md gives:
// GOWORK=$PWD/func.work.
func TestFuncBuild_HostBuilderBuildsEachFunction(t *testing.T) {
	if testing.Short() {
		t.Skip("builds each function (and func-go) as func's host builder does")
	}
	files, err := filepath.Glob("../../functions/*/func.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no func.yaml found: %v", err)
	}
	if doc := deploymentDoc(t); !bytes.Contains(doc, []byte(`GOWORK="$PWD/func.work" func deploy`)) {
		t.Error(`docs/deployment.md does not give GOWORK="$PWD/func.work" for func deploy`)
	}
	fys := loadFuncYAMLs(t)
	for _, file := range files {
		dir, err := filepath.Abs(filepath.Dir(file))
		if err != nil {
			t.Fatal(err)
		}
		fy := fys[file]
		t.Run(filepath.Base(dir), func(t *testing.T) {
			if builder, _ := fy.Build["builder"].(string); builder != "host" {
				t.Fatalf("%s: build.builder %q; only the host builder sees this tree (pack and s2i build the folder alone)", file, builder)
			}
			if !signature(t, dir) {
				t.Fatal("a static Handle: this test scaffolds instanced functions only")
			}
			work := filepath.Join(dir, "func.work")
			if _, err := os.Stat(work); err != nil {
				t.Errorf("no func.work (%v): building as func does, in the caller's environment", err)
				work = ""
			}
			if err := hostBuild(t, dir, fy.Invoke, work); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// hostBuild writes func's scaffolding to dir/.func/build, builds it with
// GOWORK=work (or, with work "", as go finds a workspace: the
// repository's go.work) and removes it again.
func hostBuild(t *testing.T, dir, invoke, work string) error {
	t.Helper()
	if invoke == "" {
		invoke = "http"
	}
	tmpl, ok := scaffoldMain[invoke]
	if !ok {
		return fmt.Errorf("invoke %q: func has no Go scaffolding for it", invoke)
	}
	fm := readGoMod(t, dir)
	dotFunc := filepath.Join(dir, ".func")
	_, statErr := os.Stat(dotFunc)
	out := filepath.Join(dotFunc, "build")
	if err := os.RemoveAll(out); err != nil { // as func does
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	t.Cleanup(func() {
		if errors.Is(statErr, os.ErrNotExist) {
			os.RemoveAll(dotFunc)
		} else {
			os.RemoveAll(out)
		}
	})

	// go.mod: the scaffolding's go line unless the function's is newer,
	// the function's module replaced by ./f, its requirements added.
	goLine := "1.25.0"
	if fm.Go != "" && versionLess(goLine, fm.Go) {
		goLine = fm.Go
	}
	var mod strings.Builder
	fmt.Fprintf(&mod, "module s\n\ngo %s\n\nrequire (\n\t%s\n\t%s v0.0.0-00010101000000-000000000000\n", goLine, funcGo, fm.Module.Path)
	for _, r := range fm.Require {
		if r.Path != "knative.dev/func-go" {
			fmt.Fprintf(&mod, "\t%s %s\n", r.Path, r.Version)
		}
	}
	fmt.Fprintf(&mod, ")\n\nreplace %s => ./f\n", fm.Module.Path)
	if err := os.WriteFile(filepath.Join(out, "go.mod"), []byte(mod.String()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "main.go"), fmt.Appendf(nil, tmpl, fm.Module.Path), 0o644); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Join("..", ".."), filepath.Join(out, "f")); err != nil {
		return err
	}

	cmd := exec.Command("go", "build", "-o", filepath.Join(t.TempDir(), "f"))
	cmd.Dir = out
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "GOWORK=") { // scripts/test.sh runs this module with GOWORK=off
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, "CGO_ENABLED=0", "GOOS=linux")
	if work != "" {
		cmd.Env = append(cmd.Env, "GOWORK="+work)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("GOWORK=%s go build in %s (func's scaffolding): %v\n%s", work, out, err, b)
	}
	return nil
}

// versionLess compares Go versions such as 1.25.0 and 1.26.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) || i < len(pb); i++ {
		var x, y int
		if i < len(pa) {
			fmt.Sscan(pa[i], &x)
		}
		if i < len(pb) {
			fmt.Sscan(pb[i], &y)
		}
		if x != y {
			return x < y
		}
	}
	return false
}
