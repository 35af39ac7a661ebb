package doveadm_test

import (
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
