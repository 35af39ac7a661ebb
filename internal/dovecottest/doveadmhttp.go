package dovecottest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/dovewarden/dovewarden-knative/pkg/config"
)

// DoveadmHTTP POSTs a raw JSON request body to the instance's doveadm HTTP
// API with Basic auth "doveadm:"+DoveadmPassword and returns the response
// body. A status other than 200 is an error.
func (in *Instance) DoveadmHTTP(ctx context.Context, body string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.DoveadmHTTPURL, strings.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("doveadm http: build request: %w", err)
	}
	req.SetBasicAuth("doveadm", in.DoveadmPassword)
	req.Header.Set("Content-Type", "application/json")
	resp, err := in.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("doveadm http: POST %s: %w", in.DoveadmHTTPURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return b, fmt.Errorf("doveadm http: read response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("doveadm http: status %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// SyncRequest returns the doveadm HTTP body for a two-way sync of user to
// the doveadm TCP listener of dst (dst.Destination), with an empty state
// and the given tag.
func SyncRequest(user string, dst *Instance, tag string) string {
	b, _ := json.Marshal([]any{[]any{"sync", map[string]any{
		"user":        user,
		"destination": []string{dst.Destination},
		"state":       "",
	}, tag}})
	return string(b)
}

// Sync runs a doveadm sync of user from in to dst through in's HTTP API
// and returns the raw response; a doveadm "error" reply is an error.
func (in *Instance) Sync(ctx context.Context, user string, dst *Instance) ([]byte, error) {
	out, err := in.DoveadmHTTP(ctx, SyncRequest(user, dst, "sync"))
	if err != nil {
		return out, err
	}
	var reply [][]json.RawMessage
	if err := json.Unmarshal(out, &reply); err != nil || len(reply) != 1 || len(reply[0]) < 1 {
		return out, fmt.Errorf("doveadm http: unexpected sync reply %q", out)
	}
	if string(reply[0][0]) != `"doveadmResponse"` {
		return out, fmt.Errorf("doveadm http: sync %s failed: %s", user, out)
	}
	return out, nil
}

// doveadmClient is the client of DoveadmHTTP: it trusts the system's
// CAs and those of caFile, when set.
func doveadmClient(caFile string) (*http.Client, error) {
	if caFile == "" {
		return http.DefaultClient, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("dovecottest: client CA: %w", err)
	}
	pool, err := config.PEMCAs(string(pem))
	if err != nil {
		return nil, fmt.Errorf("dovecottest: client CA %s: %w", caFile, err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}

// TestMessage returns a small RFC 5322 message with CRLF line endings.
func TestMessage(subject, body string) string {
	return "From: sender@example.test\r\nTo: u1@example.test\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@example.test>\r\n" +
		"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n" + body + "\r\n"
}
