// Command fakedoveadm is a zero-latency stand-in for Dovecot's doveadm HTTP
// API, for benchmarks of dovewarden itself (scripts/bench-local.sh): every
// "sync" succeeds at once with a new state, so what is measured is
// dovewarden's own cost. It listens on loopback only. Tests use
// pkg/doveadm/doveadmtest instead.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"strings"
	"sync/atomic"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18099", "loopback address to serve on")
	flag.Parse()
	if !strings.HasPrefix(*listen, "127.0.0.1:") && !strings.HasPrefix(*listen, "[::1]:") {
		log.Fatalf("listen %s: loopback only", *listen)
	}
	var syncs atomic.Int64
	http.HandleFunc("POST /doveadm/v1", func(w http.ResponseWriter, r *http.Request) {
		var cmds [][]json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&cmds); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out := make([]any, 0, len(cmds))
		for _, c := range cmds {
			var name, tag string
			if len(c) != 3 || json.Unmarshal(c[0], &name) != nil || json.Unmarshal(c[2], &tag) != nil {
				http.Error(w, "want [name, params, tag]", http.StatusBadRequest)
				return
			}
			switch name {
			case "sync":
				n := syncs.Add(1)
				out = append(out, []any{"doveadmResponse", []any{map[string]string{"state": fmt.Sprintf("state-%d", n)}}, tag})
			default:
				out = append(out, []any{"error", map[string]string{"type": "unknownMethod"}, tag})
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	http.HandleFunc("GET /syncs", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, syncs.Load()) })
	log.Fatal(http.ListenAndServe(*listen, nil))
}
