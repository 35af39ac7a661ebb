package doveadm_test

import (
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// Both transports list the users of real Dovecot 2.3 and 2.4 instances
// (passwd-file userdb) as the sweep needs them.
func TestIntegrationDovecot_ListUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	users := map[string]string{"u1": "pass", "u2": "pass", "x@dom.test": "pass"}
	want := "u1|u2|x@dom.test"
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test", Users: users})
			waitListening(t, in.DoveadmHTTPURL)
			ep := doveadm.Endpoint{Name: in.Name, URL: in.DoveadmHTTPURL, User: "doveadm", Password: in.DoveadmPassword, Config: in.ConfigPath}
			got, err := collect(doveadm.NewHTTP(nil, 30*time.Second), ep)
			sort.Strings(got)
			if err != nil || strings.Join(got, "|") != want {
				t.Errorf("doveadm-http: %q, %v", got, err)
			}
			if v != dovecottest.V23 {
				return // 2.4's doveadm binary lives in a chroot
			}
			got, err = collect(doveadm.NewExec("doveadm", 30*time.Second), ep)
			sort.Strings(got)
			if err != nil || strings.Join(got, "|") != want {
				t.Errorf("doveadm-exec: %q, %v", got, err)
			}
		})
	}
}

// waitListening waits until the doveadm HTTP listener accepts: Dovecot is
// started once its IMAP port accepts, and the doveadm listener can follow
// a moment later on a busy machine.
func waitListening(t *testing.T, rawURL string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", u.Host, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("doveadm HTTP at %s never accepted: %v", u.Host, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A userdb that fails while the users are listed (here the second of two
// passwd-files is missing), with real Dovecot 2.3 and 2.4: the HTTP API
// answers exit code 65 and no user, the CLI prints the first userdb's
// users and exits 75 ("User listing returned failure"). Both are errors,
// never a complete listing, and the HTTP one's message says that the
// userdb listing failed rather than a bare "data error".
func TestIntegrationDovecot_ListUsersUserdbFails(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	second := map[string]string{
		dovecottest.V23: "userdb {\n  driver = passwd-file\n  args = /nonexistent/users\n}\n",
		dovecottest.V24: "userdb second {\n  driver = passwd-file\n  passwd_file_path = /nonexistent/users\n}\n",
	}
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			in := dovecottest.StartT(t, dovecottest.Options{Version: v, Name: "mail-a.test",
				Users: map[string]string{"u1": "pass", "u2": "pass"}, ExtraConfig: second[v]})
			waitListening(t, in.DoveadmHTTPURL)
			bin, err := in.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ep := doveadm.Endpoint{Name: in.Name, URL: in.DoveadmHTTPURL, User: "doveadm", Password: in.DoveadmPassword, Config: in.ConfigPath}
			got, err := collect(doveadm.NewHTTP(nil, 30*time.Second), ep)
			if doveadm.ExitCodeOf(err) != 65 || len(got) != 0 || !strings.Contains(fmt.Sprint(err), "userdb") {
				t.Errorf("doveadm-http: %q, %v; want no user and exit code 65 naming the userdb", got, err)
			}
			got, err = collect(doveadm.NewExec(bin, 30*time.Second), ep)
			sort.Strings(got)
			if doveadm.ExitCodeOf(err) != 75 || strings.Join(got, "|") != "u1|u2" || !strings.Contains(fmt.Sprint(err), "User listing returned failure") {
				t.Errorf("doveadm-exec: %q, %v; want u1 and u2, then exit code 75 with doveadm's reason", got, err)
			}
		})
	}
}
