package sink

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
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

// Authorization is sent with every post; a password in the URL goes as
// Basic auth; without either no Authorization header is sent.
func TestSend_Authorization(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Authorization")
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	withUser := strings.Replace(srv.URL, "http://", "http://dovecot:s3cret@", 1)
	for _, tc := range []struct{ url, auth, want string }{
		{srv.URL, "Bearer tok", "Bearer tok"},
		{withUser, "", "Basic ZG92ZWNvdDpzM2NyZXQ="},
		{srv.URL, "", ""},
	} {
		s, err := New(Options{URL: tc.url, Budget: 2 * time.Second, Authorization: tc.auth})
		if err != nil {
			t.Fatal(err)
		}
		ev := cloudevents.NewEvent()
		ev.SetID("1")
		ev.SetType("org.dovewarden.test")
		ev.SetSource("test")
		if err := s.Send(context.Background(), ev); err != nil {
			t.Fatalf("send with %q: %v", tc.auth, err)
		}
		if h := <-got; h != tc.want {
			t.Errorf("Authorization %q, want %q", h, tc.want)
		}
	}
}
