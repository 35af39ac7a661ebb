package dovecottest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestExporter checks the http-post exporter config and that events carry
// the instance name as hostname.
func TestExporter(t *testing.T) {
	needRoot(t)
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			events := make(chan []byte, 100)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				select {
				case events <- b:
				default:
				}
			}))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-x.test",
				Users: map[string]string{"u1": "pass"}, ExporterURL: srv.URL + "/events",
				ExportFilter: `event=imap_command_finished AND cmd_name=APPEND`, ExportTimeout: 5 * time.Second})
			s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
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
