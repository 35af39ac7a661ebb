package doveadm

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

// listReference reads a user list reply with encoding/json as a whole: the
// users of [["doveadmResponse",{"userList":[...]},tag],...] when data is
// one, and ok false when it is not. known is false where the reference
// cannot tell (a key given twice in the object).
func listReference(data []byte, tag string) (users []string, ok, known bool) {
	var top []json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return nil, false, false // not all of it JSON: decodeUserList stops at the tag
	}
	var e []json.RawMessage
	if len(top) == 0 || json.Unmarshal(top[0], &e) != nil || len(e) < 3 {
		return nil, false, true
	}
	var kind, got string
	if json.Unmarshal(e[0], &kind) != nil || kind != "doveadmResponse" || json.Unmarshal(e[2], &got) != nil || got != tag {
		return nil, false, true
	}
	dec := json.NewDecoder(bytes.NewReader(e[1]))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false, true
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, _ := dec.Token()
		key := tok.(string)
		if seen[key] {
			return nil, false, false
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, false, false
		}
		if key == "userList" {
			// null is no list, and no user: decodeUserList wants strings.
			var ptrs []*string
			if json.Unmarshal(v, &ptrs) != nil || ptrs == nil {
				return nil, false, true
			}
			users = []string{}
			for _, p := range ptrs {
				if p == nil {
					return nil, false, true
				}
				users = append(users, *p)
			}
		}
	}
	if !seen["userList"] {
		return nil, false, true
	}
	return users, true, true
}

// FuzzDecodeUserList: whatever doveadm's HTTP API answers to a user
// listing, decodeUserList returns without a panic, and where the answer is
// JSON, it agrees with encoding/json reading all of it: the same users
// when it is a listing with the request's tag, and an error when not.
func FuzzDecodeUserList(f *testing.F) {
	for _, s := range []string{
		`[["doveadmResponse",{"userList":["u1","u2"]},"TAG"]]`,
		`[["doveadmResponse",{"userList":[]},"TAG"]]`,
		`[["doveadmResponse",{"other":{"a":[1]},"userList":["u\u00e9"]},"TAG"]]`,
		`[["doveadmResponse",{"userList":["u1"],"userList":["u2"]},"TAG"]]`,
		`[["error",{"type":"exitCode","exitCode":75},"TAG"]]`,
		`[["error",{"type":"unAuthorized"},"TAG"]]`,
		`[["doveadmResponse",{"u1":{"uid":"5000"}},"TAG"]]`,
		`[["doveadmResponse",{"userList":[1,2]},"TAG"]]`,
		`[["doveadmResponse",{"userList":null},"TAG"]]`,
		`[["doveadmResponse",{"userList":["u1",null]},"TAG"]]`,
		`[["doveadmResponse",{"userList":["u1"]},"someone-else"]]`,
		`[["doveadmResponse",{"userList":["u1","u`,
		`{"userList":[]}`,
		`<html>hello</html>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var users []string
		err := decodeUserList(bytes.NewReader(data), "TAG", func(u string) error {
			users = append(users, u)
			return nil
		})
		var ce *callbackError
		if errors.As(err, &ce) {
			t.Fatalf("a callback error where the callback never fails: %v", err)
		}
		want, ok, known := listReference(data, "TAG")
		switch {
		case !known:
		case ok && err != nil:
			t.Fatalf("refused a listing of %q: %v", want, err)
		case ok && !slices.Equal(users, want) && (len(users) > 0 || len(want) > 0):
			t.Fatalf("users %q, want %q", users, want)
		case !ok && err == nil:
			t.Fatalf("took %q from an answer that is no listing with the request's tag", users)
		}
	})
}
