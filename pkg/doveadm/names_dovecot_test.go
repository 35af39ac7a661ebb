package doveadm_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dovewarden/dovewarden-knative/internal/dovecottest"
	"github.com/dovewarden/dovewarden-knative/pkg/doveadm"
)

// oddNames are usernames real mail systems have, which Dovecot takes with
// auth_username_chars empty: punctuation, UTF-8, the braces of a Redis
// hash tag, a space inside, and the longest name doveadm.ValidateUser
// allows (a mail home folder's name can be no longer).
var oddNames = []string{
	"a+tag", "first.last", "a-b_c", "per%cent", "a&b=c", "jürgen", "x{y}z", "}{",
	"john doe", strings.Repeat("l", doveadm.MaxUserLen),
}

// Both transports list and sync such names, as given, with real Dovecot
// 2.3 and 2.4.
func TestIntegrationDovecot_OddUsernames(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Dovecot instances")
	}
	users := map[string]string{}
	for _, u := range oddNames {
		if err := doveadm.ValidateUser(u); err != nil {
			t.Fatal(err)
		}
		users[u] = "pass"
	}
	want := slices.Sorted(slices.Values(oddNames))
	for _, v := range []string{dovecottest.V23, dovecottest.V24} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			opts := func(name string) dovecottest.Options {
				return dovecottest.Options{Version: v, Name: name, Users: users, ExtraConfig: "auth_username_chars =\n"}
			}
			a := dovecottest.StartT(t, opts("mail-a.test"))
			b := dovecottest.StartT(t, opts("mail-b.test"))
			waitListening(t, a.DoveadmHTTPURL)
			bin, err := a.DoveadmScript(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ep := doveadm.Endpoint{Name: a.Name, URL: a.DoveadmHTTPURL, User: "doveadm", Password: a.DoveadmPassword,
				Config: a.ConfigPath, Destination: b.Destination}
			for _, tr := range []struct {
				name string
				t    interface {
					doveadm.Lister
					Sync(context.Context, doveadm.Endpoint, doveadm.SyncRequest) (doveadm.SyncResult, error)
				}
			}{{"doveadm-http", doveadm.NewHTTP(nil, time.Minute)}, {"doveadm-exec", doveadm.NewExec(bin, time.Minute)}} {
				got, err := collect(tr.t, ep)
				slices.Sort(got)
				if err != nil || !slices.Equal(got, want) {
					t.Errorf("%s lists %q, %v; want %q", tr.name, got, err, want)
				}
				for _, u := range oddNames {
					s, err := dovecottest.LoginIMAP(ctx, a.IMAPAddr, u, "pass")
					if err != nil {
						t.Fatal(err)
					}
					_, err = s.Append(ctx, "INBOX", "", dovecottest.TestMessage(tr.name, "x"))
					s.Close()
					if err != nil {
						t.Fatalf("APPEND as %q: %v", u, err)
					}
					res, err := tr.t.Sync(ctx, ep, doveadm.SyncRequest{User: u, Destination: b.Destination, LockTimeout: 10 * time.Second})
					if err != nil || res.State == "" {
						t.Errorf("%s sync %q: %+v %v", tr.name, u, res, err)
						continue
					}
					if got, want := messages(t, b, u), messages(t, a, u); got != want {
						t.Errorf("%s sync %q: B has %s, A %s", tr.name, u, got, want)
					}
				}
			}
		})
	}
}
