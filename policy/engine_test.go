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
	names     map[string]string // stored names, by lower-case name
}

// LoginState answers as the real store does, from the fields.
func (f *fakeStore) LoginState(_ context.Context, user, secret string) (store.LoginState, error) {
	mfa, err := f.userMFA(user)
	if err != nil {
		return store.LoginState{}, err
	}
	ls := store.LoginState{MFA: mfa, AllowAppPasswords: f.allow, User: f.names[strings.ToLower(user)]}
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
		kind      Credential
		reason    string // substring of Login.Reason
		noLookups bool   // the store must not be asked for app passwords
		setup     func(*fakeStore)
	}{
		{name: "ok/app-password", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}, allow: true, kind: AppPassword},
		{name: "ok/app-password-formatted-upper", attempt: Attempt{Proto: IMAP, User: "Alice", Secret: "ABCD EFGH IJKL MNOP", TLS: true, Client: tlsClient}, allow: true, kind: AppPassword},
		{name: "ok/app-password-smtp-scope", attempt: Attempt{Proto: SMTP, User: "alice", Secret: smtpOnly, TLS: true, Client: tlsClient}, allow: true, kind: AppPassword},
		{name: "ok/trusted-plaintext", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: false, Client: trustedClient}, allow: true, kind: AppPassword},
		{name: "ok/disabled-primary", attempt: Attempt{Proto: IMAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient}, allow: true, kind: Primary},
		{name: "ok/no-row-default-disabled", attempt: Attempt{Proto: LDAP, User: "zed", Secret: primaryPW, TLS: true, Client: tlsClient}, allow: true, kind: Primary},
		{name: "ok/enabled-primary", attempt: Attempt{Proto: IMAP, User: "erin", Secret: primaryPW, TLS: true, Client: tlsClient}, allow: true, kind: Primary},
		{name: "ok/enabled-app-password", attempt: Attempt{Proto: IMAP, User: "erin", Secret: goodApp, TLS: true, Client: tlsClient}, allow: true, kind: AppPassword},
		{name: "ok/plaintext-loopback-to-loopback", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: false, Local: true, Client: netip.MustParseAddrPort("[::ffff:127.0.0.1]:5000")}, allow: true, kind: AppPassword},
		{name: "fail/plaintext-local-claimed-from-afar", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: false, Local: true, Client: tlsClient}, reason: "plaintext", noLookups: true},
		{name: "fail/plaintext-untrusted", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: false, Client: tlsClient}, reason: "plaintext", noLookups: true},
		{name: "fail/enforced-primary", attempt: Attempt{Proto: IMAP, User: "alice", Secret: primaryPW, TLS: true, Client: tlsClient}, reason: "enforced"},
		{name: "fail/enforced-wrong-app-shaped", attempt: Attempt{Proto: IMAP, User: "alice", Secret: "aaaabbbbccccdddd", TLS: true, Client: tlsClient}, reason: "enforced"},
		{name: "fail/expired", attempt: Attempt{Proto: IMAP, User: "alice", Secret: expired, TLS: true, Client: tlsClient}, reason: "expired"},
		{name: "fail/out-of-scope", attempt: Attempt{Proto: IMAP, User: "alice", Secret: smtpOnly, TLS: true, Client: tlsClient}, reason: "scope"},
		{name: "ok/other-users-secret-is-checked-as-primary", attempt: Attempt{Proto: IMAP, User: "bob", Secret: goodApp, TLS: true, Client: tlsClient}, allow: true, kind: Primary, setup: func(f *fakeStore) {}},
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
			if d.Allowed() != tc.allow || (tc.allow && d.Credential() != tc.kind) {
				t.Fatalf("Decide = allow %v kind %v (%s), want allow %v kind %v", d.Allowed(), d.Credential(), d.Reason(), tc.allow, tc.kind)
			}
			if tc.reason != "" && !strings.Contains(d.Reason(), tc.reason) {
				t.Errorf("reason %q does not mention %q", d.Reason(), tc.reason)
			}
			// An app password's success is audited by Decide (with its
			// last use); a deny when it is finished.
			if !d.Allowed() {
				if n := len(fs.events); n != 0 {
					t.Fatalf("audit events before Finish = %d, want 0", n)
				}
				if c := d.Finish(context.Background(), NotAsked); c != ClassDenied && c != ClassNeedTLS {
					t.Fatalf("Finish of a deny = %v", c)
				}
			}
			if tc.noLookups && fs.finds != 0 {
				t.Errorf("store was asked %d times for app passwords", fs.finds)
			}
			// Every outcome except a provisional primary allow is audited
			// by now; the primary one is audited by Finish.
			wantEvents := 1
			if d.Allowed() && d.Credential() == Primary {
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
			if d.Allowed() && d.Credential() == AppPassword {
				if d.User() != fs.apps[strings.ToLower(strings.TrimSpace(tc.attempt.User))+"\x00"+strings.ToLower(strings.ReplaceAll(string(tc.attempt.Secret), " ", ""))].User {
					t.Errorf("decision user %q is not the stored name", d.User())
				}
				if len(fs.touched) != 1 || fs.touched[0].Proto != string(tc.attempt.Proto) || fs.touched[0].Addr != tc.attempt.Client.String() {
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
	l, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Decide error = %v, want the store's error", err)
	}
	if c := l.Finish(context.Background(), NotAsked); c != ClassTemporary {
		t.Fatalf("Finish after a store error = %v, want temporary", c)
	}
	if len(fs.events) != 1 || fs.events[0].Outcome != "unavailable" {
		t.Fatalf("events = %+v", fs.events)
	}
}

// TestFinish: each front maps a Class to its wire reply; the class of
// every (decision, upstream result) pair is fixed here.
func TestFinish(t *testing.T) {
	tests := []struct {
		name    string
		user    string
		secret  Secret
		result  Result
		want    Class
		outcome string
	}{
		{"ok/primary-accepted", "dave", primaryPW, Accepted, ClassOK, "success"},
		{"fail/primary-refused", "dave", primaryPW, Refused, ClassDenied, "failure"},
		{"fail/primary-not-asked", "dave", primaryPW, NotAsked, ClassDenied, "failure"},
		{"temp/primary-unreachable", "dave", primaryPW, Unreachable(errors.New("down")), ClassTemporary, "unavailable"},
		{"ok/app-password-accepted", "alice", goodApp, Accepted, ClassOK, "success"},
		{"fail/app-password-refused", "alice", goodApp, Refused, ClassDenied, "failure"},
		{"fail/denied-accepted-anyway", "alice", "wrong", Accepted, ClassDenied, "failure"},
		{"temp/denied-unreachable", "alice", "wrong", Unreachable(nil), ClassTemporary, "unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFake()
			e := New(Options{Store: fs, FailureDelay: -1})
			l, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: tc.user, Secret: tc.secret, TLS: true, Client: tlsClient})
			if err != nil {
				t.Fatal(err)
			}
			if c := l.Finish(context.Background(), tc.result); c != tc.want {
				t.Fatalf("Finish = %v, want %v", c, tc.want)
			}
			if last := fs.events[len(fs.events)-1]; last.Outcome != tc.outcome {
				t.Fatalf("last event %+v, want outcome %s", last, tc.outcome)
			}
			if c := l.Finish(context.Background(), Accepted); c != ClassDenied {
				t.Fatalf("a second Finish = %v, want denied", c)
			}
			if n := e.InFlight(); n != 0 {
				t.Fatalf("InFlight = %d after Finish", n)
			}
		})
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
			if err != nil || !d.Allowed() || d.Credential() != Primary {
				t.Fatalf("Decide = %+v, %v", d, err)
			}
			r := Refused
			if tc.ok {
				r = Accepted
			}
			d.Finish(context.Background(), r)
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
	e.Undecided(Attempt{Received: start}, "test").Finish(context.Background(), NotAsked)
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
	e.Undecided(Attempt{Received: time.Now()}, "test").Finish(ctx, NotAsked)
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
		kind  Credential
		id    int64
		label string
		want  string
	}{
		{AppPassword, 12, "Outlook", "app-password:12 (Outlook)"},
		{Primary, 0, "", "primary"},
		{NoCredential, 0, "", "none"},
		{SecondFactorCredential, 0, "", "second-factor"},
	} {
		if got := describe(tc.kind, tc.id, tc.label); got != tc.want {
			t.Errorf("describe = %q, want %q", got, tc.want)
		}
	}
	for _, tc := range []struct {
		got, want string
	}{
		{Success.String(), "success"}, {Failure.String(), "failure"}, {Unavailable.String(), "unavailable"},
		{ClassOK.String(), "ok"}, {ClassDenied.String(), "denied"}, {ClassTemporary.String(), "temporary"}, {ClassNeedTLS.String(), "need-tls"},
		{Web.String(), "web"},
	} {
		if tc.got != tc.want {
			t.Errorf("String = %q, want %q", tc.got, tc.want)
		}
	}
}

func TestUnavailableIsAudited(t *testing.T) {
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1})
	l := e.Undecided(Attempt{Proto: LDAP, User: "alice", Secret: primaryPW, Client: tlsClient}, "directory down")
	if c := l.Finish(context.Background(), Unreachable(errors.New("dial 127.0.0.1:389: connection refused"))); c != ClassTemporary {
		t.Fatalf("class %v", c)
	}
	if len(fs.events) != 1 || fs.events[0].Outcome != "unavailable" || !strings.Contains(fs.events[0].Detail, "connection refused") || strings.Contains(fs.events[0].Detail, primaryPW) {
		t.Fatalf("events = %+v", fs.events)
	}
}

// TestRefusedAppPasswordIsNamed: an app password refused for its scope
// (or expiry) is audited with its id and label, not as "none".
func TestRefusedAppPasswordIsNamed(t *testing.T) {
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1})
	l, _ := e.Decide(context.Background(), Attempt{Proto: IMAP, User: "alice", Secret: smtpOnly, TLS: true, Client: tlsClient})
	if l.Allowed() || l.Credential() != AppPassword || l.AppPasswordID() != 9 || l.Label() != "printer" {
		t.Fatalf("login = %+v", l)
	}
	l.Finish(context.Background(), NotAsked)
	if len(fs.events) != 1 || !strings.Contains(fs.events[0].Detail, "credential=app-password:9 (printer)") {
		t.Fatalf("events = %+v", fs.events)
	}
}

func TestRealmAliases(t *testing.T) {
	tests := []struct {
		name  string
		user  string
		pw    Secret
		allow bool
		kind  Credential
		as    string
	}{
		{"fail/enforced-user-with-realm-primary", "alice@example.test", primaryPW, false, NoCredential, ""},
		{"ok/enforced-user-with-realm-app-password", "ALICE@Example.Test", goodApp, true, AppPassword, "alice"},
		{"fail/enforced-under-realm-name-without-realm", "zoe", primaryPW, false, NoCredential, ""},
		{"ok/other-realm-is-another-user", "alice@elsewhere.test", primaryPW, true, Primary, "alice@elsewhere.test"},
		{"ok/disabled-user-with-realm", "dave@example.test", primaryPW, true, Primary, "dave@example.test"},
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
			if d.Allowed() != tc.allow || d.Credential() != tc.kind || (tc.allow && d.User() != tc.as) {
				t.Errorf("Decide = allow %v kind %v user %q (%s); want %v %v %q", d.Allowed(), d.Credential(), d.User(), d.Reason(), tc.allow, tc.kind, tc.as)
			}
			d.Finish(context.Background(), NotAsked)
		})
	}
}

func TestSlowUpstreamRefusalWarns(t *testing.T) {
	var b strings.Builder
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&b, nil))})
	a := Attempt{Proto: IMAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient, Received: time.Now().Add(-time.Second)}
	d, _ := e.Decide(context.Background(), a)
	d.Finish(context.Background(), Refused)
	if !strings.Contains(b.String(), "auth_failure_delay = 0") {
		t.Errorf("no warning about the upstream's own delay:\n%s", b.String())
	}
}

func TestUpstreamRefusedAppPasswordLogin(t *testing.T) {
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1})
	a := Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}
	d, err := e.Decide(context.Background(), a)
	if err != nil || d.Credential() != AppPassword {
		t.Fatalf("Decide = %+v, %v", d, err)
	}
	d.Finish(context.Background(), Refused)
	if len(fs.events) != 2 || fs.events[1].Outcome != "failure" || !strings.Contains(fs.events[1].Detail, "upstream refused the login on the user's behalf") {
		t.Fatalf("events = %+v", fs.events)
	}
	// Accepted, there is nothing more to record.
	d, _ = e.Decide(context.Background(), a)
	d.Finish(context.Background(), Accepted)
	if len(fs.events) != 3 {
		t.Fatalf("events = %+v", fs.events)
	}
}

// TestOnOutcome: every recorded outcome reaches the OnOutcome hook once,
// with the protocol, the kind of credential and the outcome.
func TestOnOutcome(t *testing.T) {
	var got []string
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1, OnOutcome: func(proto Proto, credential Credential, outcome Outcome) {
		got = append(got, proto.String()+"/"+credential.String()+"/"+outcome.String())
	}})
	ctx := context.Background()
	app := Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}
	if d, err := e.Decide(ctx, app); err != nil || !d.Allowed() {
		t.Fatalf("app password: %+v, %v", d, err)
	} else {
		d.Finish(ctx, Accepted)
	}
	if d, _ := e.Decide(ctx, Attempt{Proto: SMTP, User: "alice", Secret: "wrong", TLS: true, Client: tlsClient}); d.Allowed() {
		t.Fatal("wrong secret of an enforced user allowed")
	} else {
		d.Finish(ctx, NotAsked)
	}
	prim := Attempt{Proto: LDAP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient}
	for _, r := range []Result{Accepted, Refused} {
		d, err := e.Decide(ctx, prim)
		if err != nil || !d.Allowed() || d.Credential() != Primary {
			t.Fatalf("primary of a user without MFA: %+v, %v", d, err)
		}
		d.Finish(ctx, r)
	}
	e.Undecided(Attempt{Proto: IMAP, User: "bob", Secret: "x", TLS: true, Client: tlsClient}, "upstream down").Finish(ctx, Unreachable(errors.New("down")))
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
	if n := e.InFlight(); n != 0 {
		t.Fatalf("InFlight = %d", n)
	}
}

// TestWeb: the portal's sign-in, password then second factor.
func TestWeb(t *testing.T) {
	tests := []struct {
		name   string
		a      Attempt
		allow  bool
		kind   Credential
		user   string
		mfa    store.MFAState
		reason string
	}{
		{name: "ok/enforced-primary", a: Attempt{User: "Alice", Secret: primaryPW}, allow: true, kind: Primary, user: "alice", mfa: store.MFAEnforced},
		{name: "ok/enabled-primary", a: Attempt{User: "erin", Secret: primaryPW}, allow: true, kind: Primary, user: "erin", mfa: store.MFAEnabled},
		{name: "fail/app-password-never-signs-in", a: Attempt{User: "alice", Secret: goodApp}, allow: true, kind: Primary, user: "alice", mfa: store.MFAEnforced},
		{name: "fail/mfa-disabled", a: Attempt{User: "dave", Secret: primaryPW}, reason: "MFA is disabled"},
		{name: "fail/no-row-default-disabled", a: Attempt{User: "zed", Secret: primaryPW}, reason: "MFA is disabled"},
		{name: "fail/plaintext", a: Attempt{User: "alice", Secret: primaryPW, TLS: false}, reason: "plaintext"},
		{name: "ok/second-factor", a: Attempt{User: "alice", Factor: SecondFactor}, allow: true, kind: SecondFactorCredential, user: "alice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFake()
			fs.names = map[string]string{"alice": "alice", "erin": "erin"}
			e := New(Options{Store: fs, FailureDelay: -1})
			a := tc.a
			a.Proto, a.Client = Web, tlsClient
			a.TLS = tc.reason != "plaintext"
			l, err := e.Decide(context.Background(), a)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Finish(context.Background(), Refused)
			if l.Allowed() != tc.allow || (tc.allow && (l.Credential() != tc.kind || l.User() != tc.user || l.MFA() != tc.mfa)) {
				t.Fatalf("Decide = allow %v kind %v user %q mfa %q (%s)", l.Allowed(), l.Credential(), l.User(), l.MFA(), l.Reason())
			}
			if !strings.Contains(l.Reason(), tc.reason) {
				t.Fatalf("reason %q does not mention %q", l.Reason(), tc.reason)
			}
			if tc.a.Factor == SecondFactor && fs.finds != 0 {
				t.Fatalf("the second factor looked up %d secrets", fs.finds)
			}
		})
	}
	t.Run("wrong-codes-count-in-the-lockout", func(t *testing.T) {
		now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
		fs := newFake()
		e := New(Options{Store: fs, FailureDelay: -1, Now: func() time.Time { return now }, Lockout: Lockout{MaxFailures: 2}})
		a := Attempt{Proto: Web, Factor: SecondFactor, User: "alice", TLS: true, Client: tlsClient}
		for range 2 {
			l, _ := e.Decide(context.Background(), a)
			if c := l.Finish(context.Background(), Refused); c != ClassDenied {
				t.Fatalf("wrong code: %v", c)
			}
		}
		l, _ := e.Decide(context.Background(), a)
		defer l.Finish(context.Background(), NotAsked)
		if l.Allowed() || !strings.Contains(l.Reason(), "locked out") {
			t.Fatalf("after two wrong codes: allowed %v (%s)", l.Allowed(), l.Reason())
		}
		if len(fs.events) != 2 || !strings.Contains(fs.events[0].Detail, "second factor refused") {
			t.Fatalf("events = %+v", fs.events)
		}
	})
}

// TestLoopbackPlaintextAuditedAsNoTLS: credentials in plain text between
// two loopback addresses pass step 1, and the audit says tls=no (it
// does not claim TLS that was not there).
func TestLoopbackPlaintextAuditedAsNoTLS(t *testing.T) {
	fs := newFake()
	e := New(Options{Store: fs, FailureDelay: -1})
	d, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: "alice", Secret: goodApp, Local: true, Client: netip.MustParseAddrPort("127.0.0.1:5000")})
	if err != nil || !d.Allowed() {
		t.Fatalf("Decide = %v, %v (%s)", d.Allowed(), err, d.Reason())
	}
	if len(fs.events) != 1 || !strings.Contains(fs.events[0].Detail, "tls=no") || !strings.Contains(fs.events[0].Detail, "loopback=yes") {
		t.Fatalf("audit events %+v, want one with tls=no loopback=yes", fs.events)
	}
}
