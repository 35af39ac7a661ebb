package dovecottest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRenderConfig(t *testing.T) {
	p := Ports{IMAP: 1143, POP3: 1110, LMTP: 1124, Doveadm: 1199, DoveadmHTTP: 1180, StatsHTTP: 1190, ManageSieve: 1419}
	for _, v := range []string{V23, V24} {
		o := Options{Version: v, Name: "mail-a.test", Dir: "/srv/x", ExporterURL: "http://127.0.0.1:9/events",
			Filters: []string{"event=imap_command_finished", "event=mail_delivery_finished"}, DoveadmPassword: "pw"}
		b, err := renderConfig(o, p, vmailUser{UID: 117, GID: 121})
		if err != nil {
			t.Fatal(err)
		}
		conf := string(b)
		for _, want := range []string{"instance_name = mail-a.test", "port = 1143", "port = 1180",
			"doveadm_password = pw", "http://127.0.0.1:9/events", "filter = event=mail_delivery_finished",
			"metric dovecottest_1 {", "/srv/x/users",
			"protocols = imap pop3 lmtp sieve", "port = 1419", "~/.dovecot.sieve",
			// An existing vmail's uid, which Dovecot must accept.
			"first_valid_uid = 117"} {
			if !strings.Contains(conf, want) {
				t.Errorf("%s config lacks %q", v, want)
			}
		}
		o.ExporterURL, o.Filters = "", nil
		if b, _ = renderConfig(o, p, vmailUser{UID: 5000, GID: 5000}); strings.Contains(string(b), "event_exporter") {
			t.Errorf("%s config has an exporter without ExporterURL", v)
		}
	}
}

// TestVmailIDs reads the vmail user's uid and the vmail group's gid from
// a tree's passwd and group files, whatever they are.
func TestVmailIDs(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/bash\nvmailer:x:7:7::/:/bin/false\nvmail:x:117:65534::/var/vmail:/usr/sbin/nologin\n",
		"etc/group":  "root:x:0:\nvmail:x:121:\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := vmailIDs(root); err != nil || v != (vmailUser{UID: 117, GID: 121}) {
		t.Errorf("vmailIDs = %+v, %v, want uid 117, gid 121", v, err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := vmailIDs(root); err == nil {
		t.Error("vmailIDs without a vmail group succeeded")
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
