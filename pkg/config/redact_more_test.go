package config

import (
	"net/url"
	"strings"
	"testing"
)

// TestRedactURL_OtherSecretNames: query parameters that commonly carry a
// secret without "pass", "secret" or "token" in their name.
func TestRedactURL_OtherSecretNames(t *testing.T) {
	for _, in := range []string{
		"http://sink/?apikey=s3cret",
		"http://sink/?api_key=s3cret",
		"http://sink/?key=s3cret",
		"http://sink/?pwd=s3cret",
		"http://sink/?auth=s3cret",
		"https://store/o?sig=s3cret",                                     // an Azure SAS URL
		"https://store/o?X-Amz-Credential=AKIA/x&X-Amz-Signature=s3cret", // a presigned S3 URL
	} {
		if got := RedactURL(in); strings.Contains(got, "s3cret") {
			t.Errorf("RedactURL(%q) = %q", in, got)
		}
	}
}

// FuzzRedactURL: a password written into a URL's user information, as an
// administrator types it (unescaped, with any of '/', '?', '#', ':' or '@'
// in it), never shows in what RedactURL makes of the URL: no piece of it
// between those characters, of 4 bytes or more, that the URL's other
// parts do not hold too.
func FuzzRedactURL(f *testing.F) {
	for _, s := range [][3]string{
		{"redis", "dw", "s3cret"}, {"redis", "dw", "?s3cret"}, {"http", "", "1234#s3cret"},
		{"rediss", "u", "a/b?c#d"}, {"http", "u:v", "p@ss:word"}, {"unix", "", "s3cret"},
		{"redis", "dw", "1234/s3cret"},
	} {
		f.Add(s[0], s[1], s[2], "redis:6379", "/0")
	}
	f.Fuzz(func(t *testing.T, scheme, user, pass, host, path string) {
		raw := scheme + "://" + user + ":" + pass + "@" + host + path
		got := RedactURL(raw)
		others := scheme + user + host + path + "xxxxx" + unparsable + unparsableIPv6 + hiddenAt + unparsableAt
		others += strings.ToLower(others) + url.PathEscape(others) + url.QueryEscape(others)
		for _, piece := range strings.FieldsFunc(pass, func(r rune) bool { return strings.ContainsRune("/?#@:", r) }) {
			if len(piece) >= 4 && !strings.Contains(others, piece) && strings.Contains(got, piece) {
				t.Errorf("RedactURL(%q) = %q shows %q of the password", raw, got, piece)
			}
		}
	})
}

// TestRedactURL_UserInformationAlone: user information without a ':' is
// a password to redis-cli (redis://PASSWORD@host) and a token to many
// HTTP services (https://TOKEN@host/, sent as Basic auth): it is hidden
// as a password is.
func TestRedactURL_UserInformationAlone(t *testing.T) {
	for in, want := range map[string]string{
		"redis://s3cret@redis:6379/0":   "redis://xxxxx@redis:6379/0",
		"rediss://s3%2Fcret@redis/0":    "rediss://xxxxx@redis/0",
		"https://s3cret@hooks.example/": "https://xxxxx@hooks.example/",
		"http://broker/x":               "http://broker/x",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRedactSecrets_EmptyAndQuoted: an empty secret changes nothing (it
// would put the mark between every byte), and a secret is hidden also as
// an error's %q spells it.
func TestRedactSecrets_EmptyAndQuoted(t *testing.T) {
	if got := RedactSecrets("refused", []string{""}); got != "refused" {
		t.Errorf("an empty secret made %q of %q", got, "refused")
	}
	msg := `server said: "pa\"ss\\word" and pa"ss\word`
	if got := RedactSecrets(msg, []string{`pa"ss\word`}); strings.Contains(got, "ss") {
		t.Errorf("RedactSecrets(%q) = %q", msg, got)
	}
}
