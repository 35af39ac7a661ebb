package dovecottest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/dovecot"
)

// TestExporter checks the http-post exporter config and that events carry
// the instance name as hostname.
func TestExporter(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, events := exporting(ctx, t, v, `event=imap_command_finished AND cmd_name=APPEND`)
			if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage("exported", "x")); err != nil {
				t.Fatal(err)
			}
			select {
			case b := <-events:
				var ev struct {
					Event, Hostname string
					Fields          map[string]any
				}
				if err := json.Unmarshal(b, &ev); err != nil {
					t.Fatalf("event %s: %v", b, err)
				}
				if ev.Event != "imap_command_finished" || ev.Hostname != "mail-x.test" || ev.Fields["cmd_name"] != "APPEND" {
					t.Fatalf("unexpected event %s", b)
				}
			case <-ctx.Done():
				t.Fatal("no event exported")
			}
		})
	}
}

// TestExporter_XCancel: Dovecot 2.3 has X-CANCEL (cancel a running
// command by its tag) and exports it as imap_command_finished with
// cmd_name X-CANCEL; without such a command it answers NO, having changed
// nothing. Dovecot 2.4 has none (cmd_name "unknown", BAD). Ingest drops
// both.
func TestExporter_XCancel(t *testing.T) {
	needRoot(t)
	for v, want := range map[string]struct{ cmd, reply string }{
		dovecottest.V23: {"X-CANCEL", "NO"},
		dovecottest.V24: {"unknown", "BAD"},
	} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, events := exporting(ctx, t, v, `event=imap_command_finished AND cmd_input_name=X-CANCEL`)
			if _, tagged, err := s.Cmd(ctx, "X-CANCEL nosuchtag"); err != nil || !strings.HasPrefix(tagged, want.reply) {
				t.Fatalf("X-CANCEL: %q %v, want %s", tagged, err, want.reply)
			}
			select {
			case b := <-events:
				ev, err := dovecot.Parse(b)
				if err != nil {
					t.Fatalf("event %s: %v", b, err)
				}
				if ev.Fields.CmdName != want.cmd || ev.Fields.TaggedReplyState != want.reply {
					t.Fatalf("unexpected event %s", b)
				}
				if c, reason := dovecot.Classify(&ev); reason == "" {
					t.Errorf("X-CANCEL kept as a change %+v: %s", c, b)
				}
			case <-ctx.Done():
				t.Fatal("no event exported")
			}
		})
	}
}

// exporting starts a Dovecot instance of version v, mail-x.test, that
// exports the events filter selects to a server of the test's, and logs
// u1 in by IMAP. The events come on the channel, their bodies as posted.
func exporting(ctx context.Context, t *testing.T, v, filter string) (*dovecottest.IMAPSession, <-chan []byte) {
	t.Helper()
	events := make(chan []byte, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		select {
		case events <- b:
		default:
		}
	}))
	t.Cleanup(srv.Close)
	in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-x.test",
		Users: map[string]string{"u1": "pass"}, ExporterURL: srv.URL + "/events",
		ExportFilter: filter, ExportTimeout: 5 * time.Second})
	s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, events
}
