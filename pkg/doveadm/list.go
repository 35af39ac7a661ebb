package doveadm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
)

// Lister lists every user a Dovecot host knows (`doveadm user '*'`), for
// the sweep. fn is called once per username as the listing streams in, so
// 100,000 users never sit in memory at once; an error from fn stops the
// listing and is returned. When ListUsers fails part-way, fn may already
// have seen some users: they are real users, the list is just incomplete.
type Lister interface {
	ListUsers(ctx context.Context, ep Endpoint, fn func(user string) error) error
}

// maxListReply bounds a user listing: about eight million 30-byte names.
const maxListReply = 256 << 20

// listOp names a listing for error messages.
func listOp(where string) string { return "list users via doveadm at " + where }

// ListUsers runs [["user",{"userMask":"*"},TAG]] on ep's doveadm HTTP API.
// Dovecot 2.3 and 2.4 both answer
// [["doveadmResponse",{"userList":["u1","u2"]},TAG]], all at once; the
// body is decoded token by token rather than into one slice.
func (h *HTTP) ListUsers(ctx context.Context, ep Endpoint, fn func(user string) error) error {
	opn := listOp(ep.Where())
	fail := func(kind Kind, err error, format string, args ...any) error {
		return &Error{Kind: kind, Op: opn, Detail: Redact(fmt.Sprintf(format, args...), ep.Secrets()...), Err: err}
	}
	tag := newTag()
	body, err := json.Marshal([]any{[]any{"user", map[string]any{"userMask": "*"}, tag}})
	if err != nil {
		return fail(KindProtocol, err, "encode request: %v", err)
	}
	resp, cancel, pe := h.post(ctx, ep, body)
	defer cancel()
	if pe != nil {
		if pe.closedEarly() {
			return fail(pe.kind, pe.err, "%s: %s", pe.detail, closedWithoutAnswer)
		}
		return fail(pe.kind, pe.err, "%s", pe.detail)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fail(KindUnauthorized, nil, "HTTP %d: doveadm rejected the credentials", resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		kind := KindProtocol
		if triedLater(resp.StatusCode) {
			kind = KindTransport
		}
		return fail(kind, nil, "HTTP %d: %s", resp.StatusCode, snippet(data, ep.Secrets()))
	}
	err = decodeUserList(io.LimitReader(resp.Body, maxListReply), tag, fn)
	var le *listError
	var ce *callbackError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return ce.err
	case errors.As(err, &le):
		if le.exit != nil {
			return &Error{Kind: KindExitCode, ExitCode: *le.exit, Op: opn, listing: true}
		}
		return fail(le.kind, nil, "%s", le.msg)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fail(KindTransport, err, "reply ended early (empty or truncated)")
	case ctx.Err() != nil:
		return fail(KindTransport, err, "no complete answer within the timeout: %v", context.Cause(ctx))
	default:
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		if errors.As(err, &se) || errors.As(err, &te) {
			return fail(KindProtocol, err, "unreadable reply: %v", err)
		}
		return fail(KindTransport, err, "reading the reply: %v", err)
	}
}

// callbackError carries fn's own error through the decoder unchanged.
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// listError is a doveadm answer that is not a user list.
type listError struct {
	kind Kind
	exit *int
	msg  string
}

func (e *listError) Error() string { return e.msg }

// decodeUserList streams [["doveadmResponse",{"userList":[...]},TAG]] into
// fn, and turns [["error",{...},TAG]] into a listError.
func decodeUserList(r io.Reader, tag string, fn func(string) error) error {
	dec := json.NewDecoder(r)
	expect := func(want json.Delim) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); !ok || d != want {
			return &listError{kind: KindProtocol, msg: fmt.Sprintf("unexpected reply shape: %v where %q belongs", tok, want)}
		}
		return nil
	}
	str := func() (string, error) {
		tok, err := dec.Token()
		if err != nil {
			return "", err
		}
		s, ok := tok.(string)
		if !ok {
			return "", &listError{kind: KindProtocol, msg: fmt.Sprintf("unexpected reply shape: %v where a string belongs", tok)}
		}
		return s, nil
	}
	for _, d := range []json.Delim{'[', '['} {
		if err := expect(d); err != nil {
			return err
		}
	}
	kind, err := str()
	if err != nil {
		return err
	}
	switch kind {
	case "error":
		var e struct {
			Type     string `json:"type"`
			ExitCode *int   `json:"exitCode"`
		}
		if err := dec.Decode(&e); err != nil {
			return err
		}
		switch {
		case e.Type == "exitCode" && e.ExitCode != nil:
			return &listError{exit: e.ExitCode}
		case e.Type == "unAuthorized":
			return &listError{kind: KindUnauthorized, msg: fmt.Sprintf("doveadm error %q", e.Type)}
		case e.Type == "internalError":
			return &listError{kind: KindInternal, msg: fmt.Sprintf("doveadm error %q", e.Type)}
		}
		return &listError{kind: KindProtocol, msg: fmt.Sprintf("doveadm error %q", e.Type)}
	case "doveadmResponse":
	default:
		return &listError{kind: KindProtocol, msg: fmt.Sprintf("unexpected reply %q", kind)}
	}
	if err := expect('{'); err != nil {
		return err
	}
	seen := false
	for dec.More() {
		key, err := str()
		if err != nil {
			return err
		}
		if key != "userList" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return err
			}
			continue
		}
		seen = true
		if err := expect('['); err != nil {
			return err
		}
		for dec.More() {
			u, err := str()
			if err != nil {
				return err
			}
			if err := fn(u); err != nil {
				return &callbackError{err}
			}
		}
		if err := expect(']'); err != nil {
			return err
		}
	}
	if err := expect('}'); err != nil {
		return err
	}
	got, err := str()
	if err != nil {
		return err
	}
	if got != tag {
		// Not the tag itself: see the same check in http.go.
		return &listError{kind: KindProtocol, msg: fmt.Sprintf("reply tag (%d bytes) does not match request tag %q", len(got), tag)}
	}
	if !seen {
		return &listError{kind: KindProtocol, msg: "reply has no userList (does the userdb support iteration?)"}
	}
	return nil
}

// ListUsers runs `doveadm [-c CONF] user '*'`, which prints one username a
// line. The mask is an argv element: no shell expands it.
func (x *Exec) ListUsers(ctx context.Context, ep Endpoint, fn func(user string) error) error {
	opn := listOp(ep.Where())
	if x.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.timeout)
		defer cancel()
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var args []string
	if ep.Config != "" {
		args = append(args, "-c", ep.Config)
	}
	cmd := command(ctx, x.bin, append(args, "user", "*")...)
	stderr := &tailBuffer{max: 2048}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return &Error{Kind: KindTransport, Op: opn, Detail: err.Error(), Err: err}
	}
	if err := cmd.Start(); err != nil {
		return &Error{Kind: KindTransport, Op: opn, Detail: err.Error(), Err: err}
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 4096), 64<<10)
	// A line counts once its newline is there: doveadm killed (the
	// timeout) while it writes one leaves a part of a name. A last line
	// without one counts only if doveadm then exits 0.
	var tail string
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			tail = string(data)
			return len(data), nil, nil
		}
		return 0, nil, nil
	})
	var fnErr error
	for sc.Scan() {
		if u := strings.TrimSuffix(sc.Text(), "\r"); u != "" {
			if fnErr = fn(u); fnErr != nil {
				break
			}
		}
	}
	scanErr := sc.Err()
	if fnErr != nil || scanErr != nil {
		// Stop doveadm rather than wait for a listing nobody reads.
		stop()
		_, _ = io.Copy(io.Discard, out)
	}
	err = cmd.Wait()
	said := strings.TrimSpace(stderr.String()) // told from unmasked (Sync)
	detail := Redact(said, ep.Secrets()...)
	switch {
	case fnErr != nil:
		return fnErr
	case scanErr != nil:
		return &Error{Kind: KindProtocol, Op: opn, Detail: fmt.Sprintf("reading the listing: %v", scanErr), Err: scanErr}
	case err == nil:
		if u := strings.TrimSuffix(tail, "\r"); u != "" {
			return fn(u)
		}
		return nil
	case ctx.Err() != nil:
		return &Error{Kind: KindTransport, Op: opn, Detail: fmt.Sprintf("killed: %v", context.Cause(ctx)), Err: err}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		if configUnreadable(said) {
			return &Error{Kind: KindConfig, ExitCode: ee.ExitCode(), Op: opn, Detail: detail, Err: err, listing: true}
		}
		return &Error{Kind: KindExitCode, ExitCode: ee.ExitCode(), Op: opn, Detail: detail, Err: err, listing: true}
	}
	return &Error{Kind: KindTransport, Op: opn, Detail: fmt.Sprintf("%v %s", err, detail), Err: err}
}
