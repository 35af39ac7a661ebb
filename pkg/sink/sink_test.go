package sink

import (
	"strings"
	"testing"
	"time"
)

func TestParseOverrides(t *testing.T) {
	ov, err := ParseOverrides(`{"extensions":{"cluster":"eu1","tier":"gold"}}`)
	if err != nil || ov["cluster"] != "eu1" || ov["tier"] != "gold" {
		t.Fatalf("%v %v", ov, err)
	}
	if ov, err := ParseOverrides(""); err != nil || ov != nil {
		t.Errorf("empty: %v %v", ov, err)
	}
	for _, bad := range []string{"{", `{"extensions":{"Bad-Name":"x"}}`, `{"extensions":[1]}`} {
		if _, err := ParseOverrides(bad); err == nil || !strings.Contains(err.Error(), "K_CE_OVERRIDES") {
			t.Errorf("ParseOverrides(%q) = %v", bad, err)
		}
	}
}

func TestNew_RejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "broker", "ftp://b/", "http://"} {
		if _, err := New(Options{URL: u, Budget: time.Second}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}
