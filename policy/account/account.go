// Package account holds the operations a user (through the Security info
// portal) or an administrator performs on an account: app passwords,
// authenticator apps and recovery codes, passkeys, MFA state changes and
// portal sessions, with their rules, their messages and their audit events
// written once.
//
// It sits beside the decision (policy): proxy/portal calls it through an
// interface it declares, and it reaches the store only through the Store
// interface below, which *store.Store implements. It imports only
// backends/store and backends/apppass of passgate's packages.
package account

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
)

// Types of the store that callers see through this package.
type (
	AppPassword = store.AppPassword
	Passkey     = store.WebAuthnCredential
	Session     = store.WebSession
	MFAState    = store.MFAState
)

// Store is what account operations need of the store.
type Store interface {
	UserMFA(ctx context.Context, user string) (store.MFAState, error)
	SetMFA(ctx context.Context, user string, st store.MFAState) (store.User, error)
	CreateAppPassword(ctx context.Context, n store.NewAppPassword) (store.AppPassword, string, error)
	ListAppPasswords(ctx context.Context, user string) ([]store.AppPassword, error)
	DeleteAppPassword(ctx context.Context, user, label string) (store.AppPassword, error)
	AllowAppPasswords(ctx context.Context) (bool, error)
	MaxAppPasswords() int
	SetTOTP(ctx context.Context, user, seed string) error
	TOTP(ctx context.Context, user string) (string, time.Time, int64, error)
	UseTOTPStep(ctx context.Context, user string, step int64) (bool, error)
	DeleteTOTP(ctx context.Context, user string) error
	SetRecoveryCodes(ctx context.Context, user string, codes []string) error
	UseRecoveryCode(ctx context.Context, user, code string) (bool, error)
	RecoveryCodesLeft(ctx context.Context, user string) (int, error)
	AddWebAuthn(ctx context.Context, c store.WebAuthnCredential) (store.WebAuthnCredential, error)
	ListWebAuthn(ctx context.Context, user string) ([]store.WebAuthnCredential, error)
	UpdateWebAuthn(ctx context.Context, user string, credID, data []byte, at time.Time) error
	DeleteWebAuthn(ctx context.Context, user string, id int64) (store.WebAuthnCredential, error)
	CreateWebSession(ctx context.Context, ws store.WebSession) error
	GetWebSession(ctx context.Context, idHash []byte) (store.WebSession, error)
	UpdateWebSession(ctx context.Context, ws store.WebSession) error
	DeleteWebSession(ctx context.Context, idHash []byte) error
	DeleteWebSessions(ctx context.Context, user string) (int, error)
	ListWebSessions(ctx context.Context, user string) ([]store.WebSession, error)
	Record(ctx context.Context, ev store.AuditEvent) error
}

// Actor is who acts, for the audit trail: the user, from the web client's
// address; or, with Kind, an administrator: "cli" (User is the operating
// system user), "admin" (User is the admin signed in to the admin
// pages) or "api" (User is the admin token's name).
type Actor struct {
	Kind string // "" (the user, on the portal), "cli", "admin", "api"
	User string // who acts
	Addr string // client address, host:port; empty for the command line
}

func (a Actor) String() string {
	switch {
	case a.Kind == "":
		return "web:" + a.User
	case a.User == "":
		return a.Kind
	}
	return a.Kind + ":" + a.User
}

// Service performs account operations. It is safe for concurrent use.
type Service struct {
	store    Store
	issuer   string
	now      func() time.Time
	auditErr func(error)
}

// Options configures New.
type Options struct {
	Store  Store
	Issuer string           // names passgate in authenticator apps; default "passgate"
	Now    func() time.Time // default time.Now
	// AuditError, when set, is told of an audit event that could not be
	// written (the command line fails then); by default it is dropped,
	// the store's journal having logged it.
	AuditError func(error)
}

// New returns a Service.
func New(o Options) *Service {
	s := &Service{store: o.Store, issuer: o.Issuer, now: o.Now, auditErr: o.AuditError}
	if s.issuer == "" {
		s.issuer = "passgate"
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Store returns the service's store, for the sessions the portal keeps.
func (s *Service) Store() Store { return s.store }

// Message returns what a user is told about err from an account
// operation: the same rule and wording as the command line, without the
// operator's commands. ok is false for a fault the user cannot fix.
func (s *Service) Message(err error) (msg string, ok bool) {
	switch {
	case errors.Is(err, store.ErrLimitReached):
		return fmt.Sprintf("You cannot add another app password: limit reached (%d). Delete an app password first.", s.store.MaxAppPasswords()), true
	case errors.Is(err, store.ErrAppPasswordsDisabled):
		return "App passwords are switched off by your administrator: none can be created, and existing ones do not work.", true
	case errors.Is(err, store.ErrMFADisabled):
		return "App passwords need multi-factor authentication (MFA), which is not turned on for your account. Ask your administrator to turn it on.", true
	case errors.Is(err, store.ErrLabelTaken):
		return "That name is already in use: choose another name, or delete that app password first.", true
	case errors.Is(err, store.ErrInvalid):
		m := strings.TrimPrefix(err.Error(), "store: ")
		m = strings.ReplaceAll(m, "label", "name")
		return strings.ToUpper(m[:1]) + m[1:] + ".", true
	case errors.Is(err, ErrBadCode):
		return "That code is not right. Type the current 6-digit code from your authenticator app.", true
	}
	return "Something went wrong on the server; try again later.", false
}

// ErrBadCode is returned when a TOTP code does not confirm a new
// authenticator app.
var ErrBadCode = errors.New("account: the code is not right")

func (s *Service) record(ctx context.Context, a Actor, action, subject, detail string, cause error) {
	ev := store.AuditEvent{Time: s.now(), Actor: a.String(), Action: action, Subject: subject, Outcome: "success"}
	if a.Addr != "" {
		ev.Detail = "addr=" + a.Addr
	}
	if detail != "" {
		if ev.Detail != "" {
			ev.Detail += " "
		}
		ev.Detail += detail
	}
	if cause != nil {
		ev.Outcome = "failure"
		r := cause.Error()
		if len(r) > 300 {
			r = r[:300] + "…"
		}
		ev.Detail += fmt.Sprintf(" error=%q", r)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.store.Record(wctx, ev); err != nil && s.auditErr != nil {
		s.auditErr(err)
	}
}

// Methods is what a user has registered.
type Methods struct {
	MFA           MFAState
	TOTP          bool
	TOTPAdded     time.Time
	RecoveryLeft  int
	Passkeys      []Passkey
	AppPasswords  []AppPassword
	AllowAppPassw bool // the global switch
}

// HasSecondFactor reports whether the user can pass a second step.
func (m Methods) HasSecondFactor() bool { return m.TOTP || len(m.Passkeys) > 0 }

// Methods returns the user's registered methods.
func (s *Service) Methods(ctx context.Context, user string) (Methods, error) {
	var m Methods
	var err error
	if m.MFA, err = s.store.UserMFA(ctx, user); err != nil {
		return m, err
	}
	_, m.TOTPAdded, _, err = s.store.TOTP(ctx, user)
	switch {
	case err == nil:
		m.TOTP = true
	case !errors.Is(err, store.ErrNotFound):
		return m, err
	}
	if m.RecoveryLeft, err = s.store.RecoveryCodesLeft(ctx, user); err != nil {
		return m, err
	}
	if m.Passkeys, err = s.store.ListWebAuthn(ctx, user); err != nil {
		return m, err
	}
	if m.AppPasswords, err = s.store.ListAppPasswords(ctx, user); err != nil {
		return m, err
	}
	if m.AllowAppPassw, err = s.store.AllowAppPasswords(ctx); err != nil {
		return m, err
	}
	return m, nil
}

// CreateAppPassword creates an app password for the actor, with the
// command line's rules, and audits it. networks, when not empty, are the
// only networks (CIDRs, or single addresses) it may be used from; the
// store refuses a malformed one with an error matching ErrInvalid. The
// secret is returned once.
func (s *Service) CreateAppPassword(ctx context.Context, a Actor, label string, scopes, networks []string, expires *time.Time) (AppPassword, string, error) {
	return s.createAppPassword(ctx, a, a.User, label, scopes, networks, expires)
}

// createAppPassword creates an app password for user, on behalf of a.
func (s *Service) createAppPassword(ctx context.Context, a Actor, user, label string, scopes, networks []string, expires *time.Time) (AppPassword, string, error) {
	label = strings.TrimSpace(label)
	if err := checkName(label); err != nil {
		s.record(ctx, a, "app-password.create", user, fmt.Sprintf("label=%q", label), err)
		return AppPassword{}, "", err
	}
	detail := fmt.Sprintf("label=%q", label)
	if scopes != nil {
		detail += " scopes=" + strings.Join(scopes, ",")
	}
	if len(networks) > 0 {
		detail += " networks=" + strings.Join(networks, ",")
	}
	if expires != nil {
		detail += " expires=" + expires.UTC().Format(time.RFC3339)
	}
	ap, secret, err := s.store.CreateAppPassword(ctx, store.NewAppPassword{User: user, Label: label, Scopes: scopes, ExpiresAt: expires, Networks: networks})
	if err == nil {
		detail = fmt.Sprintf("id=%d %s", ap.ID, detail)
	}
	s.record(ctx, a, "app-password.create", user, detail, err)
	return ap, secret, err
}

// checkName refuses names with bidirectional-override characters, which
// can make one name look like another; the store refuses the rest.
func checkName(label string) error {
	for _, r := range label {
		if (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069') || r == '\u200e' || r == '\u200f' || r == '\u061c' {
			return fmt.Errorf("%w: name %q contains a bidirectional control character", store.ErrInvalid, label)
		}
	}
	return nil
}

// DeleteAppPassword deletes the actor's app password labelled label.
func (s *Service) DeleteAppPassword(ctx context.Context, a Actor, label string) (AppPassword, error) {
	return s.deleteAppPassword(ctx, a, a.User, label)
}

func (s *Service) deleteAppPassword(ctx context.Context, a Actor, user, label string) (AppPassword, error) {
	ap, err := s.store.DeleteAppPassword(ctx, user, label)
	detail := fmt.Sprintf("label=%q", label)
	if err == nil {
		detail = fmt.Sprintf("id=%d %s", ap.ID, detail)
	}
	s.record(ctx, a, "app-password.delete", user, detail, err)
	return ap, err
}

// NewTOTP returns a new authenticator-app key for user: SHA-1, 6 digits,
// 30 s, as every app expects. Nothing is stored until ConfirmTOTP.
func (s *Service) NewTOTP(user string) (*otp.Key, error) {
	k, err := totp.Generate(totp.GenerateOpts{Issuer: s.issuer, AccountName: user, Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, SecretSize: 20})
	if err != nil {
		return nil, fmt.Errorf("account: new TOTP key: %w", err)
	}
	return k, nil
}

// totpOpts are the parameters of every code.
var totpOpts = totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// matchStep returns the time step (within one step of now) whose code is
// code, or -1.
func matchStep(seed, code string, now time.Time) int64 {
	code = strings.ReplaceAll(strings.TrimSpace(code), " ", "")
	if len(code) != 6 {
		return -1
	}
	found := int64(-1)
	for _, d := range []int64{-1, 0, 1} {
		t := now.Add(time.Duration(d) * 30 * time.Second)
		want, err := totp.GenerateCodeCustom(seed, t, totpOpts)
		if err != nil {
			return -1
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 && found < 0 {
			found = t.Unix() / 30
		}
	}
	return found
}

// ConfirmTOTP registers seed as the actor's authenticator app if code is
// its current code, makes ten new recovery codes (returned once), moves
// the state enabled to enforced, and audits it. A wrong code is
// ErrBadCode.
func (s *Service) ConfirmTOTP(ctx context.Context, a Actor, seed, code string) ([]string, error) {
	step := matchStep(seed, code, s.now())
	if step < 0 {
		s.record(ctx, a, "mfa.totp.add", a.User, "", ErrBadCode)
		return nil, ErrBadCode
	}
	codes, err := newRecoveryCodes()
	if err != nil {
		return nil, err
	}
	err = s.store.SetTOTP(ctx, a.User, seed)
	if err == nil {
		_, err = s.store.UseTOTPStep(ctx, a.User, step)
	}
	if err == nil {
		err = s.store.SetRecoveryCodes(ctx, a.User, codes)
	}
	if err == nil {
		err = s.enforce(ctx, a)
	}
	s.record(ctx, a, "mfa.totp.add", a.User, "", err)
	if err != nil {
		return nil, err
	}
	return codes, nil
}

// enforce moves the state enabled to enforced: a second factor is
// registered.
func (s *Service) enforce(ctx context.Context, a Actor) error {
	st, err := s.store.UserMFA(ctx, a.User)
	if err != nil {
		return err
	}
	if st != store.MFAEnabled {
		return nil
	}
	_, err = s.store.SetMFA(ctx, a.User, store.MFAEnforced)
	s.record(ctx, a, "user.set-mfa", a.User, "mfa=enforced reason=\"second factor registered\"", err)
	return err
}

// newRecoveryCodes returns ten codes of ten letters ("abcde-fghij",
// about 47 bits each).
func newRecoveryCodes() ([]string, error) {
	out := make([]string, 10)
	for i := range out {
		g, err := apppass.Generate()
		if err != nil {
			return nil, err
		}
		out[i] = g[:5] + "-" + g[5:10]
	}
	return out, nil
}

// CheckSecondFactor checks a code typed at the second step: the current
// TOTP code (each accepted once) or an unused recovery code (then used
// up). It returns how the user passed ("totp", "recovery-code") or "".
func (s *Service) CheckSecondFactor(ctx context.Context, user, code string) (string, error) {
	code = strings.TrimSpace(code)
	if code == "" || len(code) > 64 {
		return "", nil
	}
	seed, _, _, err := s.store.TOTP(ctx, user)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return "", err
	default:
		if step := matchStep(seed, code, s.now()); step >= 0 {
			ok, err := s.store.UseTOTPStep(ctx, user, step)
			if err != nil || !ok {
				return "", err // a code used before is refused
			}
			return "totp", nil
		}
	}
	ok, err := s.store.UseRecoveryCode(ctx, user, code)
	if err != nil || !ok {
		return "", err
	}
	return "recovery-code", nil
}

// DeleteTOTP deletes the actor's authenticator app and recovery codes.
func (s *Service) DeleteTOTP(ctx context.Context, a Actor) error {
	err := s.store.DeleteTOTP(ctx, a.User)
	s.record(ctx, a, "mfa.totp.delete", a.User, "", err)
	return err
}

// AddPasskey stores a passkey the actor registered, moves the state
// enabled to enforced and audits it.
func (s *Service) AddPasskey(ctx context.Context, a Actor, name string, credID, data []byte) (Passkey, error) {
	name = strings.TrimSpace(name)
	err := checkName(name)
	var p Passkey
	if err == nil {
		p, err = s.store.AddWebAuthn(ctx, store.WebAuthnCredential{User: a.User, Name: name, CredentialID: credID, Data: data})
	}
	if err == nil {
		err = s.enforce(ctx, a)
	}
	s.record(ctx, a, "mfa.passkey.add", a.User, fmt.Sprintf("name=%q", name), err)
	return p, err
}

// DeletePasskey deletes the actor's passkey id.
func (s *Service) DeletePasskey(ctx context.Context, a Actor, id int64) (Passkey, error) {
	p, err := s.store.DeleteWebAuthn(ctx, a.User, id)
	s.record(ctx, a, "mfa.passkey.delete", a.User, fmt.Sprintf("id=%d name=%q", id, p.Name), err)
	return p, err
}

// Passkeys returns the user's passkeys.
func (s *Service) Passkeys(ctx context.Context, user string) ([]Passkey, error) {
	return s.store.ListWebAuthn(ctx, user)
}

// UsedPasskey records a passkey's use (its new sign count).
func (s *Service) UsedPasskey(ctx context.Context, user string, credID, data []byte) error {
	return s.store.UpdateWebAuthn(ctx, user, credID, data, s.now())
}

// SignedOutEverywhere audits a "Sign out everywhere" and ends every
// session of the actor.
func (s *Service) SignOutEverywhere(ctx context.Context, a Actor) (int, error) {
	n, err := s.store.DeleteWebSessions(ctx, a.User)
	s.record(ctx, a, "web.sign-out-everywhere", a.User, fmt.Sprintf("sessions=%d", n), err)
	return n, err
}

// SignedOut audits a sign-out.
func (s *Service) SignedOut(ctx context.Context, a Actor) {
	s.record(ctx, a, "web.sign-out", a.User, "", nil)
}

// ErrNotFound matches the error of a lookup of something that does not
// exist (a session, an app password).
var ErrNotFound = store.ErrNotFound
