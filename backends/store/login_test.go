package store_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
)

// testLoginState: the one-query read of a login gives the same answers
// as the separate reads (UserMFA, AllowAppPasswords, FindAppPassword),
// field for field, for every kind of user and secret.
func testLoginState(t *testing.T, f *fixture) {
	s := f.migrated(t, func(o *store.Options) { o.DefaultMFA = store.MFAEnabled })
	ctx := ctxT(t)
	addUser(t, s, "Alice", store.MFAEnforced)
	addUser(t, s, "bob", store.MFADisabled)
	exp := time.Now().Add(time.Hour)
	a, secret, err := s.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "phone", Scopes: []string{"ldap"}, ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.TouchAppPassword(ctx, a.ID, store.Usage{Addr: "192.0.2.7:1", Proto: "ldap", Client: "wiki"}); err != nil {
		t.Fatal(err)
	}
	_, other, err := s.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	wrong := []byte(secret)
	wrong[0] = 'a' + (wrong[0]-'a'+1)%26
	cases := []struct {
		name, user, secret string
		mfa                store.MFAState
		match              bool
	}{
		{"enforced/match", "alice", secret, store.MFAEnforced, true},
		{"enforced/match-formatted", "ALICE", strings.ToUpper(apppass.Format(secret)), store.MFAEnforced, true},
		{"enforced/other-app-password", "alice", other, store.MFAEnforced, true},
		{"enforced/wrong", "alice", string(wrong), store.MFAEnforced, false},
		{"enforced/not-shaped", "alice", "hunter2", store.MFAEnforced, false},
		{"disabled/alices-secret", "bob", secret, store.MFADisabled, false},
		{"no-row/default", "carol", secret, store.MFAEnabled, false},
	}
	for _, sw := range []bool{true, false} {
		if err := s.SetAllowAppPasswords(ctx, sw); err != nil {
			t.Fatal(err)
		}
		for _, tc := range cases {
			got, err := s.LoginState(ctx, tc.user, tc.secret)
			if err != nil {
				t.Fatalf("%s: LoginState: %v", tc.name, err)
			}
			if got.MFA != tc.mfa || got.AllowAppPasswords != sw {
				t.Errorf("%s (switch %v): MFA %q, allow %v; want %q, %v", tc.name, sw, got.MFA, got.AllowAppPasswords, tc.mfa, sw)
			}
			if mfa, err := s.UserMFA(ctx, tc.user); err != nil || mfa != got.MFA {
				t.Errorf("%s: UserMFA %q, %v; LoginState %q", tc.name, mfa, err, got.MFA)
			}
			want, ferr := s.FindAppPassword(ctx, tc.user, tc.secret)
			switch {
			case !tc.match && got.AppPassword != nil:
				t.Errorf("%s: LoginState matched app password %d, want none", tc.name, got.AppPassword.ID)
			case tc.match && got.AppPassword == nil:
				t.Errorf("%s: LoginState matched nothing; FindAppPassword %+v, %v", tc.name, want, ferr)
			case tc.match && !reflect.DeepEqual(*got.AppPassword, want):
				t.Errorf("%s: LoginState's app password\n%+v\nFindAppPassword's\n%+v", tc.name, *got.AppPassword, want)
			}
		}
	}
	for _, bad := range []string{"", "alice\x00", "al ice", "alice\xff"} {
		_, err := s.LoginState(ctx, bad, secret)
		mustErr(t, err, store.ErrInvalid, "user name")
	}
}
