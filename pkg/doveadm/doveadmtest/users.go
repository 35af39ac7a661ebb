package doveadmtest

import (
	"encoding/json"
	"net/http"
	"time"
)

// serveUsers answers [["user",{"userMask":"*"},TAG]] as Dovecot 2.3 and 2.4
// do: [["doveadmResponse",{"userList":[...]},TAG]], every user at once.
// Another mask is answered as invalidRequest: the sweep only ever lists all.
func (s *Server) serveUsers(w http.ResponseWriter, r *http.Request, params json.RawMessage, tag string) {
	var p struct {
		UserMask string `json:"userMask"`
	}
	if err := json.Unmarshal(params, &p); err != nil || p.UserMask != "*" {
		writeJSON(w, []any{[]any{"error", map[string]any{"type": "invalidRequest"}, tag}})
		return
	}
	s.mu.Lock()
	s.listCalls++
	users, respond := s.Users, s.RespondList
	s.mu.Unlock()
	var rep Reply
	if respond != nil {
		rep = respond()
	}
	if d := s.Latency + rep.Delay; d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}
	if writeFailure(w, rep, tag) {
		return
	}
	if users == nil {
		users = []string{}
	}
	writeJSON(w, []any{[]any{"doveadmResponse", map[string]any{"userList": users}, tag}})
}

// SetUsers replaces the users the fake lists; safe while it serves.
func (s *Server) SetUsers(users ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Users = users
}

// ListCalls counts the user listings the fake answered.
func (s *Server) ListCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listCalls
}
