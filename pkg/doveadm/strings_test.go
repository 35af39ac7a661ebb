package doveadm

import (
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
)

// capped reads in through a stringCap of limit.
func capped(t testing.TB, in string, limit int) (string, *stringCap) {
	t.Helper()
	sc := newStringCap(strings.NewReader(in), limit)
	out, err := io.ReadAll(sc)
	if err != nil {
		t.Fatal(err)
	}
	return string(out), sc
}

func TestStringCap(t *testing.T) {
	for _, c := range []struct {
		in, want string
		longest  int
	}{
		{`[["doveadmResponse",[{"state":"AQAA"}],"t1"]]`, `[["doveadmResponse",[{"state":"AQAA"}],"t1"]]`, 0},
		{`[["doveadmResponse",[{"state":"AQAAAAAAAAAAAAAAA"}],"t1"]]`, `[["doveadmResponse",[{"state":"\u0000"}],"t1"]]`, 17},
		// Escapes count as written, and a quote escaped ends nothing.
		{`["ab\"cdefghijklmnop", "\\", "\u00e9\u00e9\u00e9"]`, `["\u0000", "\\", "\u0000"]`, 18},
		{`{"1234567890123456":1}`, `{"1234567890123456":1}`, 0},
		{"[\"a\"\n,\t\"b\"]", "[\"a\"\n,\t\"b\"]", 0},
		// Cut off: a short string's start is passed for the parser to
		// call truncated; a long one's is not.
		{`["ab`, `["ab`, 0},
		{`["abcdefghijklmnopq`, `[`, 0},
	} {
		got, sc := capped(t, c.in, 16)
		if got != c.want || sc.longest != c.longest {
			t.Errorf("%s: %s, longest %d; want %s, %d", c.in, got, sc.longest, c.want, c.longest)
		}
	}
}

// FuzzStringCap: JSON through a stringCap is JSON with the same tokens,
// but for each string written longer than the limit (escapes counted as
// written), which is the string dropped.
//
//	go test -run '^$' -fuzz FuzzStringCap -fuzztime 60s ./pkg/doveadm/
func FuzzStringCap(f *testing.F) {
	f.Add(`[["doveadmResponse",[{"state":"AQAAAAAAAAAAAAAAAAAAAAA"}],"t1"]]`, 8)
	f.Add(`["ab\"cdefgh", "\\", "\u00e9\n", {"k\u0022ey": ["\ud83d\ude00"]}]`, 3)
	f.Add(`"\\\\\\\"\\"`, 2)
	f.Add(`[1, true, null, {"a": -2.5e3}]`, 1)
	f.Fuzz(func(t *testing.T, in string, limit int) {
		if limit < 1 || limit > 1<<10 || !json.Valid([]byte(in)) {
			return
		}
		out, sc := capped(t, in, limit)
		want, long := tokens(t, in)
		got, _ := tokens(t, out)
		longest := 0
		for i, w := range long {
			if w > limit {
				want[i], longest = dropped, max(longest, w)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q through a cap of %d: %q; want the same tokens, those written longer than %d dropped", in, limit, out, limit)
		}
		if sc.longest != longest {
			t.Fatalf("%q through a cap of %d: longest %d, want %d", in, limit, sc.longest, longest)
		}
	})
}

// tokens is src's JSON tokens and, by index, each string's length as
// written between its quotes.
func tokens(t *testing.T, src string) ([]json.Token, map[int]int) {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(src))
	d.UseNumber()
	var toks []json.Token
	long := map[int]int{}
	for {
		before := d.InputOffset()
		tok, err := d.Token()
		if err == io.EOF {
			return toks, long
		}
		if err != nil {
			t.Fatalf("%q: not JSON: %v", src, err)
		}
		if _, ok := tok.(string); ok {
			// Before the string: separators and blanks, never a quote.
			start := before + int64(strings.IndexByte(src[before:], '"'))
			long[len(toks)] = int(d.InputOffset()-start) - 2
		}
		toks = append(toks, tok)
	}
}
