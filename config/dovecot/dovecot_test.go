package dovecotconfig

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// recorder collects the exporter's POSTs as "event cmd_name args".
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var ev struct {
		Event  string `json:"event"`
		Fields struct {
			CmdName string `json:"cmd_name"`
			CmdArgs string `json:"cmd_args"`
		} `json:"fields"`
	}
	if err := json.Unmarshal(body, &ev); err == nil {
		r.mu.Lock()
		r.got = append(r.got, ev.Event+" "+ev.Fields.CmdName+" "+ev.Fields.CmdArgs)
		r.mu.Unlock()
	}
	w.WriteHeader(http.StatusAccepted)
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.got...)
	sort.Strings(out)
	return out
}

// TestSnippets_RealDovecot loads each shipped snippet into a real Dovecot of
// its version and checks what it exports: changes, including a FETCH that
// sets \Seen, but not a FETCH with .PEEK, a SELECT or a failed command. This
// is the proof that the filter syntax (wildcards on cmd_args) means what
// the snippet says on both versions.
func TestSnippets_RealDovecot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running Dovecot test instances needs root (CI runs as root)")
	}
	for _, version := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			if err := dovecottest.Ensure(version); err != nil {
				t.Fatal(err)
			}
			snippet, err := os.ReadFile("events-" + version + ".conf")
			if err != nil {
				t.Fatal(err)
			}
			rec := &recorder{}
			srv := httptest.NewServer(rec)
			defer srv.Close()
			conf := strings.ReplaceAll(string(snippet), "http://127.0.0.1:8080/events", srv.URL+"/events")
			inst := dovecottest.StartT(t, dovecottest.Options{
				Version: version, Name: "mail-a.test",
				Users:       map[string]string{"u1": "pass"},
				ExtraConfig: conf,
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := dovecottest.LoginIMAP(ctx, inst.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage("hello", "body")); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"SELECT INBOX", "FETCH 1 (BODY.PEEK[])", "FETCH 1 (body[])", "CREATE INBOX", "UID STORE 1 +FLAGS (\\Flagged)"} {
				if _, tagged, err := s.Cmd(ctx, cmd); err != nil {
					t.Fatalf("%s: %v (%s)", cmd, err, tagged)
				}
			}
			want := []string{
				"imap_command_finished APPEND ",
				"imap_command_finished FETCH 1 (body[])",
				"imap_command_finished UID STORE 1 +FLAGS (\\Flagged)",
			}
			deadline := time.Now().Add(15 * time.Second)
			var got []string
			for time.Now().Before(deadline) {
				if got = rec.events(); len(got) >= len(want) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // anything unwanted arrives too
			got = rec.events()
			if len(got) != len(want) {
				t.Fatalf("exported %d events, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
			}
			for i := range want {
				if !strings.HasPrefix(got[i], want[i]) {
					t.Errorf("export %d: %q, want prefix %q", i, got[i], want[i])
				}
			}
		})
	}
}
