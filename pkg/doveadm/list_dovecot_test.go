package doveadm_test

import (
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
