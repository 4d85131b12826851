package store_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
)

// testLoginState: the one-query read of a login gives the same answers
// as the separate reads (UserMFA, AllowAppPasswords, FindAppPassword),
// field for field of what a decision reads (decisionFields), for every
// kind of user and secret.
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
			case tc.match && !reflect.DeepEqual(*got.AppPassword, decisionFields(want)):
				t.Errorf("%s: LoginState's app password\n%+v\nFindAppPassword's\n%+v", tc.name, *got.AppPassword, want)
			}
		}
	}
	for _, bad := range []string{"", "alice\x00", "al ice", "alice\xff"} {
		_, err := s.LoginState(ctx, bad, secret)
		mustErr(t, err, store.ErrInvalid, "user name")
	}
}

// decisionFields is a, from FindAppPassword, as LoginState gives it: without
// the columns a decision does not read (its creation and last use).
func decisionFields(a store.AppPassword) store.AppPassword {
	a.CreatedAt, a.LastUsedAt, a.LastUsedAddr, a.LastUsedProto, a.LastUsedClient = time.Time{}, nil, "", "", ""
	return a
}

// ruleFields is a LockoutState as LoginLockoutState gives it: the
// address's and the user's counters without their lockouts in a row and
// tags, which the rules read of the pair only.
func ruleFields(st store.LockoutState) store.LockoutState {
	for _, c := range []*store.LockoutCounter{&st.Addr, &st.User} {
		c.Locks, c.Recent = 0, nil
	}
	return st
}

// testLoginLockoutState: the one-statement read gives exactly what
// LockoutState and LoginState give apart, whatever rows exist (less
// what ruleFields drops).
func testLoginLockoutState(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	_, secret := create(t, s, "alice", "phone")
	now := time.Now().UTC().Truncate(time.Microsecond)
	win := now.Add(-time.Hour)
	tag, err := s.LockoutTag("alice", "192.0.2.1", "guess")
	if err != nil {
		t.Fatal(err)
	}
	// alice from 192.0.2.1: a locked pair with a remembered tag, the
	// address's and the user's own counters, and a familiar address.
	for _, c := range []struct {
		user, addr string
		recent     []byte
	}{{"alice", "192.0.2.1", tag}, {"", "192.0.2.1", nil}, {"alice", "", nil}} {
		if _, err := s.AddFailure(ctx, c.user, c.addr, now, win, win, c.recent); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Lock(ctx, "alice", "192.0.2.1", now, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	note := &store.LockoutNote{User: "alice", Addr: "198.51.100.0/64", At: now, Familiar: true}
	if err := s.Record(ctx, store.AuditEvent{Action: "login", Subject: "alice", Outcome: "success", Lockout: note}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, lockUser, lockAddr, user, secret string
	}{
		{"counters/match", "alice", "192.0.2.1", "alice", secret},
		{"counters/wrong", "alice", "192.0.2.1", "Alice", "guess"},
		{"familiar/match", "alice", "198.51.100.0/64", "alice", secret},
		{"nothing/no-row", "bob", "203.0.113.5", "bob", secret},
		{"address-only", "bob", "192.0.2.1", "bob", "guess"},
	}
	for _, tc := range cases {
		wantLock, err := s.LockoutState(ctx, tc.lockUser, tc.lockAddr)
		if err != nil {
			t.Fatal(err)
		}
		wantLogin, err := s.LoginState(ctx, tc.user, tc.secret)
		if err != nil {
			t.Fatal(err)
		}
		gotLock, gotLogin, err := s.LoginLockoutState(ctx, tc.lockUser, tc.lockAddr, tc.user, tc.secret)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !reflect.DeepEqual(gotLock, ruleFields(wantLock)) {
			t.Errorf("%s: lockout\n%+v\nwant (LockoutState)\n%+v", tc.name, gotLock, wantLock)
		}
		if !reflect.DeepEqual(gotLogin, wantLogin) {
			t.Errorf("%s: login state\n%+v\nwant (LoginState)\n%+v", tc.name, gotLogin, wantLogin)
		}
	}
	// What the cases must have covered, so that the test can fail.
	st, _, err := s.LoginLockoutState(ctx, "alice", "192.0.2.1", "alice", secret)
	if err != nil || st.Pair.Locks != 1 || !bytes.Equal(st.Pair.Recent, tag) || st.Addr.Failures != 1 || st.User.Failures != 1 {
		t.Fatalf("alice from 192.0.2.1: %+v, %v", st, err)
	}
	if st, ls, err := s.LoginLockoutState(ctx, "alice", "198.51.100.0/64", "alice", secret); err != nil || !st.FamiliarSeen.Equal(now) || ls.AppPassword == nil {
		t.Fatalf("alice from a familiar address: %+v, %+v, %v", st, ls, err)
	}
	for _, bad := range []string{"", "alice\x00", "al ice"} {
		_, _, err := s.LoginLockoutState(ctx, "alice", "192.0.2.1", bad, secret)
		mustErr(t, err, store.ErrInvalid, "user name")
	}
}
