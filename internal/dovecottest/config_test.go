package dovecottest

import (
	"strings"
	"testing"
)

func TestRenderConfig(t *testing.T) {
	p := Ports{IMAP: 1143, POP3: 1110, LMTP: 1124, Doveadm: 1199, DoveadmHTTP: 1180, StatsHTTP: 1190, ManageSieve: 1419}
	for _, v := range []string{V23, V24} {
		o := Options{Version: v, Name: "mail-a.test", Dir: "/srv/x", ExporterURL: "http://127.0.0.1:9/events",
			Filters: []string{"event=imap_command_finished", "event=mail_delivery_finished"}, DoveadmPassword: "pw"}
		b, err := renderConfig(o, p)
		if err != nil {
			t.Fatal(err)
		}
		conf := string(b)
		for _, want := range []string{"instance_name = mail-a.test", "port = 1143", "port = 1180",
			"doveadm_password = pw", "http://127.0.0.1:9/events", "filter = event=mail_delivery_finished",
			"metric dovecottest_1 {", "/srv/x/users",
			"protocols = imap pop3 lmtp sieve", "port = 1419", "~/.dovecot.sieve"} {
			if !strings.Contains(conf, want) {
				t.Errorf("%s config lacks %q", v, want)
			}
		}
		o.ExporterURL, o.Filters = "", nil
		if b, _ = renderConfig(o, p); strings.Contains(string(b), "event_exporter") {
			t.Errorf("%s config has an exporter without ExporterURL", v)
		}
	}
}

func TestDefaultFilter(t *testing.T) {
	o := Options{ExporterURL: "http://x"}
	if f := o.filters(); len(f) != 1 || f[0] != DefaultExportFilter {
		t.Fatalf("filters = %q", f)
	}
}

func TestUsersFile(t *testing.T) {
	b, err := usersFile(map[string]string{"u2": "b", "u1": "a"})
	if err != nil {
		t.Fatal(err)
	}
	want := "u1:{PLAIN}a::::::userdb_admin=yes\nu2:{PLAIN}b::::::userdb_admin=yes\n"
	if string(b) != want {
		t.Fatalf("users file = %q, want %q", b, want)
	}
	if _, err := usersFile(map[string]string{"bad:user": "x"}); err == nil {
		t.Fatal("accepted a user name with a colon")
	}
}

func TestLiteralLen(t *testing.T) {
	for line, want := range map[string]int{"* 1 FETCH (BODY[] {12}": 12, "x {3+}": 3, "* OK done": -1, "{x}": -1} {
		n, ok := literalLen(line)
		if !ok {
			n = -1
		}
		if n != want {
			t.Errorf("literalLen(%q) = %d, want %d", line, n, want)
		}
	}
}
