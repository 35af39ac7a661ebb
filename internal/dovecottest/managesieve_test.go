package dovecottest

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestManageSieveParse runs the client against a scripted server: quoted
// strings with escapes, literals in data and in a NO's text, response
// codes, and what the client sends.
func TestManageSieveParse(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	sent := make(chan string, 8)
	go func() {
		defer server.Close()
		r := bufio.NewReader(server)
		w := func(s string) { _, _ = server.Write([]byte(s)) }
		w("\"IMPLEMENTATION\" \"Test \\\"q\\\" \\\\\"\r\n\"SASL\" \"PLAIN\"\r\n\"STARTTLS\"\r\nOK \"ready\"\r\n")
		replies := []string{
			"OK\r\n",
			"\"a b\"\r\n\"c\" ACTIVE\r\n{3}\r\nd\"e\r\nOK \"Listscripts completed.\"\r\n",
			"{7}\r\nkeep;\r\n\r\nOK\r\n",
			"NO (NONEXISTENT) {6}\r\nno\r\nx)\r\n",
			"NO (QUOTA/MAXSIZE \"x)\") \"too big\"\r\n",
		}
		for i, reply := range replies {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if i == len(replies)-1 { // PUTSCRIPT: the literal follows
				lit := make([]byte, 3)
				_, _ = r.Read(lit)
				rest, _ := r.ReadString('\n')
				line += string(lit) + rest
			}
			sent <- line
			w(reply)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s := &ManageSieveSession{conn: client, r: bufio.NewReader(client)}
	setDeadline(ctx, client)
	lines, err := s.readReply("greeting")
	if err != nil {
		t.Fatal(err)
	}
	s.Capabilities = capabilities(lines)
	if s.Capabilities["IMPLEMENTATION"] != `Test "q" \` || s.Capabilities["SASL"] != "PLAIN" {
		t.Fatalf("capabilities %q", s.Capabilities)
	}
	if _, ok := s.Capabilities["STARTTLS"]; !ok {
		t.Fatalf("capabilities %q lack STARTTLS", s.Capabilities)
	}
	if err := s.Authenticate(ctx, "u", "p"); err != nil {
		t.Fatal(err)
	}
	if got := <-sent; got != "AUTHENTICATE \"PLAIN\" \"AHUAcA==\"\r\n" {
		t.Fatalf("sent %q", got)
	}
	names, active, err := s.ListScripts(ctx)
	if err != nil || strings.Join(names, "|") != `a b|c|d"e` || active != "c" {
		t.Fatalf("ListScripts = %q %q %v", names, active, err)
	}
	<-sent
	if got, err := s.GetScript(ctx, "x"); err != nil || got != "keep;\r\n" {
		t.Fatalf("GetScript = %q %v", got, err)
	}
	<-sent
	err = s.DeleteScript(ctx, `a "b"`)
	var me *ManageSieveError
	if !errors.As(err, &me) || me.Status != "NO" || me.Code != "NONEXISTENT" || me.Text != "no\r\nx)" {
		t.Fatalf("DeleteScript err = %#v", err)
	}
	if got := <-sent; got != "DELETESCRIPT \"a \\\"b\\\"\"\r\n" {
		t.Fatalf("sent %q", got)
	}
	err = s.PutScript(ctx, "s", "k;\n")
	if !errors.As(err, &me) || me.Code != `QUOTA/MAXSIZE "x)"` || me.Text != "too big" {
		t.Fatalf("PutScript err = %#v", err)
	}
	if got := <-sent; got != "PUTSCRIPT \"s\" {3+}\r\nk;\n\r\n" {
		t.Fatalf("sent %q", got)
	}
	if err := s.SetActive(ctx, "a\r\nb"); err == nil {
		t.Fatal("SetActive sent a name with CRLF")
	}
}
