package state

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// TestLoadScripts_LoadsEveryScript checks that every script of the package
// is made with newScript, so that LoadScripts loads it: a call that finds
// its script missing pays a second round trip (NOSCRIPT, then EVAL).
func TestLoadScripts_LoadsEveryScript(t *testing.T) {
	files, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	made, direct := 0, 0
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".go") || strings.HasSuffix(f.Name(), "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f.Name(), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch fn := call.Fun.(type) {
			case *ast.Ident:
				if fn.Name == "newScript" {
					made++
				}
			case *ast.SelectorExpr:
				if fn.Sel.Name == "NewScript" {
					direct++
					t.Logf("%s: redis.NewScript", fset.Position(call.Pos()))
				}
			}
			return true
		})
	}
	if direct != 1 {
		t.Errorf("redis.NewScript called %d times, want once (in newScript): make each script with newScript", direct)
	}
	if made == 0 || len(scripts) != made {
		t.Fatalf("%d scripts recorded, %d made with newScript", len(scripts), made)
	}

	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := New(rdb).LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	for i, sc := range scripts {
		ok, err := rdb.ScriptExists(ctx, sc.Hash()).Result()
		if err != nil || len(ok) != 1 || !ok[0] {
			t.Errorf("script %d of %d not loaded: %v %v", i+1, len(scripts), ok, err)
		}
	}
}
