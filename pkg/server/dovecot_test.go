//go:build linux

package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
)

// TestIntegrationDovecot_ExporterAfterItsIdleConnectionIsClosed: at
// --max-connections a new connection closes the one idle the longest.
// When that is Dovecot's exporter's (2.3 and 2.4), its next event still
// arrives: the exporter notices the close and opens another connection.
func TestIntegrationDovecot_ExporterAfterItsIdleConnectionIsClosed(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	const rounds = 10
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			events := make(chan string, 100)
			// Two places: the exporter's connection and one other.
			addr, reg, _, _ := limited(t, 2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				if strings.Contains(string(b), `"cmd_name":"APPEND"`) {
					events <- string(b)
				}
				w.WriteHeader(http.StatusAccepted)
			}))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test",
				Users: map[string]string{"u1": "pass"}, ExporterURL: "http://" + addr + "/events",
				ExportFilter: `event=imap_command_finished AND cmd_name=APPEND`})
			s, err := dovecottest.LoginIMAP(ctx, in.IMAPAddr, "u1", "pass")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			closed := 0.0
			for i := range rounds {
				subject := fmt.Sprintf("round-%d", i)
				if _, err := s.Append(ctx, "INBOX", "", dovecottest.TestMessage(subject, "x")); err != nil {
					t.Fatal(err)
				}
				select {
				case <-events:
				case <-time.After(10 * time.Second):
					t.Fatalf("round %d: the APPEND's event did not arrive (%v idle connections closed before)", i, closed)
				}
				// The exporter's connection is idle now. Two
				// connections of ours, one after the other, take
				// both places: the second closes the exporter's
				// connection, idle longer than the first.
				waitFor(t, "the exporter's connection to be idle", func() bool {
					return metricValue(t, reg, "dovewarden_http_connections", "idle") == 1
				})
				var ours []*keepAlive
				for range 2 {
					k := dialKeepAlive(t, addr)
					if code, _, err := k.get("/other"); err != nil || code != http.StatusAccepted {
						t.Fatalf("another client: %d %v", code, err)
					}
					ours = append(ours, k)
				}
				closed = metricValue(t, reg, "dovewarden_http_connections_closed_for_new_total", "idle")
				if closed != float64(i+1) {
					t.Fatalf("round %d: %v idle connections closed, want the exporter's, one a round", i, closed)
				}
				// Ours end: the exporter's next connection finds
				// a place free.
				for _, k := range ours {
					k.Close()
				}
				waitFor(t, "our connections to end", func() bool {
					return metricValue(t, reg, "dovewarden_http_connections", "idle") == 0
				})
			}
		})
	}
}
