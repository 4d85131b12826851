package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// fakeStore is an in-memory Store for the decision's unit tests; the real
// stores are tested by backends/store's contract suite and end to end in
// integration/.
type fakeStore struct {
	mu        sync.Mutex
	mfa       map[string]store.MFAState
	def       store.MFAState
	apps      map[string]store.AppPassword // key: user + "\x00" + secret
	allow     bool
	failNext  error
	touched   []store.Usage
	events    []store.AuditEvent
	finds     int
	touchGone bool
}

// LoginState answers as the real store does, from the fields.
func (f *fakeStore) LoginState(_ context.Context, user, secret string) (store.LoginState, error) {
	mfa, err := f.userMFA(user)
	if err != nil {
		return store.LoginState{}, err
	}
	ls := store.LoginState{MFA: mfa, AllowAppPasswords: f.allow}
	if ap, err := f.findAppPassword(user, secret); err == nil {
		ls.AppPassword = &ap
	}
	return ls, nil
}

func (f *fakeStore) userMFA(name string) (store.MFAState, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("user name: %w", store.ErrInvalid)
	}
	if f.failNext != nil {
		return "", f.failNext
	}
	if st, ok := f.mfa[strings.ToLower(name)]; ok {
		return st, nil
	}
	return f.def, nil
}

func (f *fakeStore) findAppPassword(user, secret string) (store.AppPassword, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.finds++
	if ap, ok := f.apps[strings.ToLower(user)+"\x00"+strings.ToLower(strings.ReplaceAll(secret, " ", ""))]; ok {
		return ap, nil
	}
	return store.AppPassword{}, store.ErrNotFound
}

func (f *fakeStore) RecordLogin(_ context.Context, id int64, u store.Usage, ev store.AuditEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.touchGone {
		return fmt.Errorf("touch: %w", store.ErrNotFound)
	}
	f.touched = append(f.touched, u)
	f.events = append(f.events, ev)
	return nil
}

func (f *fakeStore) Record(_ context.Context, ev store.AuditEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
	return nil
}

const (
	goodApp   = "abcdefghijklmnop"
	expired   = "qqqqwwwweeeerrrr"
	smtpOnly  = "zzzzxxxxccccvvvv"
	primaryPW = "hunter2-primary"
)

func newFake() *fakeStore {
	past := time.Now().Add(-time.Hour)
	return &fakeStore{
		mfa: map[string]store.MFAState{
			"alice": store.MFAEnforced,
			"erin":  store.MFAEnabled,
			"dave":  store.MFADisabled,
		},
		def:   store.MFADisabled,
		allow: true,
		apps: map[string]store.AppPassword{
			"alice\x00" + goodApp:  {ID: 7, User: "alice", Label: "Outlook", Scopes: store.AllScopes()},
			"alice\x00" + expired:  {ID: 8, User: "alice", Label: "old", Scopes: store.AllScopes(), ExpiresAt: &past},
			"alice\x00" + smtpOnly: {ID: 9, User: "alice", Label: "printer", Scopes: []string{store.ScopeSMTP}},
			"erin\x00" + goodApp:   {ID: 10, User: "erin", Label: "phone", Scopes: store.AllScopes()},
			"dave\x00" + goodApp:   {ID: 11, User: "dave", Label: "left over", Scopes: store.AllScopes()},
		},
	}
}

var (
	tlsClient     = netip.MustParseAddrPort("203.0.113.9:50000")
	trustedClient = netip.MustParseAddrPort("10.1.2.3:40000")
)

func TestDecide(t *testing.T) {
	tests := []struct {
		name      string
		attempt   Attempt
		allow     bool
		kind      Kind
		reason    string // substring of Decision.Reason
		noLookups bool   // the store must not be asked for app passwords
		setup     func(*fakeStore)
	}{
		{name: "ok/app-password", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}, allow: true, kind: KindAppPassword},
		{name: "ok/app-password-formatted-upper", attempt: Attempt{Proto: IMAP, User: "Alice", Secret: "ABCD EFGH IJKL MNOP", TLS: true, Client: tlsClient}, allow: true, kind: KindAppPassword},
		{name: "ok/app-password-smtp-scope", attempt: Attempt{Proto: SMTP, User: "alice", Secret: smtpOnly, TLS: true, Client: tlsClient}, allow: true, kind: KindAppPassword},
		{name: "ok/trusted-plaintext", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: false, Client: trustedClient}, allow: true, kind: KindAppPassword},
		{name: "ok/disabled-primary", attempt: Attempt{Proto: IMAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient}, allow: true, kind: KindPrimary},
		{name: "ok/no-row-default-disabled", attempt: Attempt{Proto: LDAP, User: "zed", Secret: primaryPW, TLS: true, Client: tlsClient}, allow: true, kind: KindPrimary},
		{name: "ok/enabled-primary", attempt: Attempt{Proto: IMAP, User: "erin", Secret: primaryPW, TLS: true, Client: tlsClient}, allow: true, kind: KindPrimary},
		{name: "ok/enabled-app-password", attempt: Attempt{Proto: IMAP, User: "erin", Secret: goodApp, TLS: true, Client: tlsClient}, allow: true, kind: KindAppPassword},
		{name: "fail/plaintext-untrusted", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: false, Client: tlsClient}, reason: "plaintext", noLookups: true},
		{name: "fail/enforced-primary", attempt: Attempt{Proto: IMAP, User: "alice", Secret: primaryPW, TLS: true, Client: tlsClient}, reason: "enforced"},
		{name: "fail/enforced-wrong-app-shaped", attempt: Attempt{Proto: IMAP, User: "alice", Secret: "aaaabbbbccccdddd", TLS: true, Client: tlsClient}, reason: "enforced"},
		{name: "fail/expired", attempt: Attempt{Proto: IMAP, User: "alice", Secret: expired, TLS: true, Client: tlsClient}, reason: "expired"},
		{name: "fail/out-of-scope", attempt: Attempt{Proto: IMAP, User: "alice", Secret: smtpOnly, TLS: true, Client: tlsClient}, reason: "scope"},
		{name: "ok/other-users-secret-is-checked-as-primary", attempt: Attempt{Proto: IMAP, User: "bob", Secret: goodApp, TLS: true, Client: tlsClient}, allow: true, kind: KindPrimary, setup: func(f *fakeStore) {}},
		{name: "fail/app-passwords-switched-off", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}, reason: "switched off", setup: func(f *fakeStore) { f.allow = false }},
		{name: "fail/empty-secret", attempt: Attempt{Proto: IMAP, User: "dave", Secret: "", TLS: true, Client: tlsClient}, reason: "empty", noLookups: true},
		{name: "fail/empty-user", attempt: Attempt{Proto: IMAP, User: "  ", Secret: "x", TLS: true, Client: tlsClient}, reason: "empty", noLookups: true},
		{name: "fail/master-separator-in-user", attempt: Attempt{Proto: IMAP, User: "alice*passgate", Secret: primaryPW, TLS: true, Client: tlsClient}, reason: "separator", noLookups: true},
		{name: "fail/app-password-of-mfa-disabled-user", attempt: Attempt{Proto: IMAP, User: "dave", Secret: goodApp, TLS: true, Client: tlsClient}, reason: "MFA is disabled"},
		{name: "fail/deleted-during-login", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}, reason: "deleted during", setup: func(f *fakeStore) { f.touchGone = true }},
		{name: "fail/invalid-user-name", attempt: Attempt{Proto: IMAP, User: "a\x00b", Secret: primaryPW, TLS: true, Client: tlsClient}, reason: "not valid"},
		{name: "fail/default-enforced-unknown-user", attempt: Attempt{Proto: IMAP, User: "zed", Secret: primaryPW, TLS: true, Client: tlsClient}, reason: "enforced", setup: func(f *fakeStore) { f.def = store.MFAEnforced }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFake()
			if tc.setup != nil {
				tc.setup(fs)
			}
			e := New(Options{Store: fs, TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, FailureDelay: -1, ForbiddenInUser: []string{"*"}})
			d, err := e.Decide(context.Background(), tc.attempt)
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if d.Allow != tc.allow || (tc.allow && d.Kind != tc.kind) {
				t.Fatalf("Decide = allow %v kind %v (%s), want allow %v kind %v", d.Allow, d.Kind, d.Reason, tc.allow, tc.kind)
			}
			if tc.reason != "" && !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("reason %q does not mention %q", d.Reason, tc.reason)
			}
			if tc.noLookups && fs.finds != 0 {
				t.Errorf("store was asked %d times for app passwords", fs.finds)
			}
			// Every outcome except a provisional primary allow is audited
			// at once; the primary one is audited by PrimaryResult.
			wantEvents := 1
			if d.Allow && d.Kind == KindPrimary {
				wantEvents = 0
			}
			if len(fs.events) != wantEvents {
				t.Fatalf("audit events = %d, want %d", len(fs.events), wantEvents)
			}
			for _, ev := range fs.events {
				if strings.Contains(ev.Detail, string(tc.attempt.Secret)) && tc.attempt.Secret != "" {
					t.Errorf("audit event holds the secret: %+v", ev)
				}
			}
			if d.Kind == KindAppPassword {
				if d.User != fs.apps[strings.ToLower(strings.TrimSpace(tc.attempt.User))+"\x00"+strings.ToLower(strings.ReplaceAll(string(tc.attempt.Secret), " ", ""))].User {
					t.Errorf("decision user %q is not the stored name", d.User)
				}
				if len(fs.touched) != 1 || fs.touched[0].Proto != tc.attempt.Proto || fs.touched[0].Addr != tc.attempt.Client.String() {
					t.Errorf("touch = %+v", fs.touched)
				}
			}
		})
	}
}

func TestDecideStoreError(t *testing.T) {
	fs := newFake()
	fs.failNext = errors.New("connection refused")
	e := New(Options{Store: fs, FailureDelay: -1})
	_, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Decide error = %v, want the store's error", err)
	}
}

func TestPrimaryResult(t *testing.T) {
	tests := []struct {
		name    string
		user    string
		ok      bool
		outcome string
		detail  string
	}{
		{"ok/disabled", "dave", true, "success", "accepted by the upstream"},
		{"ok/enabled-would-be-refused", "erin", true, "success", "would be refused once enforced"},
		{"fail/refused", "dave", false, "failure", "refused by the upstream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFake()
			e := New(Options{Store: fs, FailureDelay: -1})
			a := Attempt{Proto: SMTP, User: tc.user, Secret: primaryPW, TLS: true, Client: tlsClient}
			d, err := e.Decide(context.Background(), a)
			if err != nil || !d.Allow || d.Kind != KindPrimary {
				t.Fatalf("Decide = %+v, %v", d, err)
			}
			e.PrimaryResult(context.Background(), a, d, tc.ok)
			if len(fs.events) != 1 {
				t.Fatalf("events = %d", len(fs.events))
			}
			ev := fs.events[0]
			if ev.Outcome != tc.outcome || !strings.Contains(ev.Detail, tc.detail) || ev.Subject != tc.user || ev.Action != "login" {
				t.Errorf("event = %+v", ev)
			}
		})
	}
}

func TestFailWaitsFromStart(t *testing.T) {
	// An hour's delay tells "from the start" from "from now" without a
	// tight bound: the attempt has spent all of it but 200ms, and a busy
	// machine may take far longer than 200ms, never an hour.
	const delay, left, patience = time.Hour, 200 * time.Millisecond, time.Minute
	e := New(Options{Store: newFake(), FailureDelay: delay})
	if e.FailureDelay() != delay {
		t.Fatalf("FailureDelay = %v", e.FailureDelay())
	}
	start := time.Now().Add(-delay + left)
	t0 := time.Now()
	e.Fail(context.Background(), Attempt{Started: start})
	if el := time.Since(t0); el > patience {
		t.Errorf("Fail waited %v; the attempt had already spent all but %v of %v", el, left, delay)
	}
	if time.Since(start) < delay {
		t.Errorf("Fail returned before the delay")
	}
	// A cancelled context ends the wait.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	t0 = time.Now()
	e.Fail(ctx, Attempt{Started: time.Now()})
	if time.Since(t0) > patience {
		t.Errorf("Fail ignored a cancelled context")
	}
}

func TestDefaults(t *testing.T) {
	e := New(Options{Store: newFake()})
	if e.FailureDelay() != DefaultFailureDelay {
		t.Errorf("default delay = %v", e.FailureDelay())
	}
	if e.Trusted(netip.MustParseAddr("127.0.0.1")) {
		t.Error("loopback trusted without configuration")
	}
	if !e.PlaintextAllowed(tlsClient, true) || e.PlaintextAllowed(tlsClient, false) {
		t.Error("PlaintextAllowed")
	}
	defer func() {
		if recover() == nil {
			t.Error("New without a store did not panic")
		}
	}()
	New(Options{})
}

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("hunter2")
	var b strings.Builder
	log := slog.New(slog.NewTextHandler(&b, nil))
	log.Info("x", slog.Any("secret", s), slog.Any("attempt", Attempt{User: "a", Secret: s}))
	jl := slog.New(slog.NewJSONHandler(&b, nil))
	jl.Info("x", slog.Any("req", struct{ Password Secret }{s}))
	j, _ := json.Marshal(struct{ Password Secret }{s})
	b.Write(j)
	if strings.Contains(b.String(), "hunter2") || s.String() != "REDACTED" || s.GoString() != "REDACTED" {
		t.Errorf("secret leaked: %s", b.String())
	}
}

func TestCredentialString(t *testing.T) {
	for _, tc := range []struct {
		d    Decision
		want string
	}{
		{Decision{Kind: KindAppPassword, AppPasswordID: 12, Label: "Outlook"}, "app-password:12 (Outlook)"},
		{Decision{Kind: KindPrimary}, "primary"},
		{Decision{}, "none"},
	} {
		if got := tc.d.Credential(); got != tc.want {
			t.Errorf("Credential() = %q, want %q", got, tc.want)
		}
	}
}

func TestUnavailableIsAudited(t *testing.T) {
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1})
	e.Unavailable(context.Background(), Attempt{Proto: LDAP, User: "alice", Secret: primaryPW, Client: tlsClient}, errors.New("dial 127.0.0.1:389: connection refused"))
	if len(fs.events) != 1 || fs.events[0].Outcome != "unavailable" || !strings.Contains(fs.events[0].Detail, "connection refused") || strings.Contains(fs.events[0].Detail, primaryPW) {
		t.Fatalf("events = %+v", fs.events)
	}
}

func TestRealmAliases(t *testing.T) {
	tests := []struct {
		name  string
		user  string
		pw    Secret
		allow bool
		kind  Kind
		as    string
	}{
		{"fail/enforced-user-with-realm-primary", "alice@example.test", primaryPW, false, KindNone, ""},
		{"ok/enforced-user-with-realm-app-password", "ALICE@Example.Test", goodApp, true, KindAppPassword, "alice"},
		{"fail/enforced-under-realm-name-without-realm", "zoe", primaryPW, false, KindNone, ""},
		{"ok/other-realm-is-another-user", "alice@elsewhere.test", primaryPW, true, KindPrimary, "alice@elsewhere.test"},
		{"ok/disabled-user-with-realm", "dave@example.test", primaryPW, true, KindPrimary, "dave@example.test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFake()
			fs.mfa["zoe@example.test"] = store.MFAEnforced
			e := New(Options{Store: fs, FailureDelay: -1, Realms: []string{"example.test"}})
			d, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: tc.user, Secret: tc.pw, TLS: true, Client: tlsClient})
			if err != nil {
				t.Fatal(err)
			}
			if d.Allow != tc.allow || d.Kind != tc.kind || (tc.allow && d.User != tc.as) {
				t.Errorf("Decide = allow %v kind %v user %q (%s); want %v %v %q", d.Allow, d.Kind, d.User, d.Reason, tc.allow, tc.kind, tc.as)
			}
		})
	}
}

func TestSlowUpstreamRefusalWarns(t *testing.T) {
	var b strings.Builder
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&b, nil))})
	a := Attempt{Proto: IMAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient, Started: time.Now().Add(-time.Second)}
	d, _ := e.Decide(context.Background(), a)
	e.PrimaryResult(context.Background(), a, d, false)
	if !strings.Contains(b.String(), "auth_failure_delay = 0") {
		t.Errorf("no warning about the upstream's own delay:\n%s", b.String())
	}
}

func TestUpstreamRefusedAppPasswordLogin(t *testing.T) {
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1})
	a := Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}
	d, err := e.Decide(context.Background(), a)
	if err != nil || d.Kind != KindAppPassword {
		t.Fatalf("Decide = %+v, %v", d, err)
	}
	e.PrimaryResult(context.Background(), a, d, true) // nothing more to record
	e.PrimaryResult(context.Background(), a, d, false)
	if len(fs.events) != 2 || fs.events[1].Outcome != "failure" || !strings.Contains(fs.events[1].Detail, "upstream refused the login on the user's behalf") {
		t.Fatalf("events = %+v", fs.events)
	}
}

// TestOnOutcome: every recorded outcome reaches the OnOutcome hook once,
// with the protocol, the kind of credential and the outcome.
func TestOnOutcome(t *testing.T) {
	var got []string
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1, OnOutcome: func(proto, credential, outcome string) {
		got = append(got, proto+"/"+credential+"/"+outcome)
	}})
	ctx := context.Background()
	app := Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}
	if d, err := e.Decide(ctx, app); err != nil || !d.Allow {
		t.Fatalf("app password: %+v, %v", d, err)
	}
	if d, _ := e.Decide(ctx, Attempt{Proto: SMTP, User: "alice", Secret: "wrong", TLS: true, Client: tlsClient}); d.Allow {
		t.Fatal("wrong secret of an enforced user allowed")
	}
	prim := Attempt{Proto: LDAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient}
	d, err := e.Decide(ctx, prim)
	if err != nil || !d.Allow || d.Kind != KindPrimary {
		t.Fatalf("primary of a user without MFA: %+v, %v", d, err)
	}
	e.PrimaryResult(ctx, prim, d, true)
	e.PrimaryResult(ctx, prim, d, false)
	e.Unavailable(ctx, Attempt{Proto: IMAP, User: "bob", Secret: "x", TLS: true, Client: tlsClient}, errors.New("down"))
	want := []string{
		"imap/app-password/success",
		"smtp/none/failure",
		"ldap/primary/success",
		"ldap/primary/failure",
		"imap/none/unavailable",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("outcomes:\n got %v\nwant %v", got, want)
	}
}
