package account

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
)

// Types of the store that administrators' faces see through this package.
type (
	User        = store.User
	UserSummary = store.UserSummary
	UserQuery   = store.UserQuery
	AdminToken  = store.AdminToken
	AuditEvent  = store.AuditEvent
	AuditFilter = store.AuditFilter
	AuditCursor = store.AuditCursor
	RolloutRow  = store.RolloutRow
)

// MFA states.
const (
	MFADisabled = store.MFADisabled
	MFAEnabled  = store.MFAEnabled
	MFAEnforced = store.MFAEnforced
)

// Errors of administrators' operations, matched with errors.Is.
var (
	ErrExists = store.ErrExists
	// The rules of app passwords.
	ErrLimitReached         = store.ErrLimitReached
	ErrAppPasswordsDisabled = store.ErrAppPasswordsDisabled
	ErrMFADisabled          = store.ErrMFADisabled
	ErrLabelTaken           = store.ErrLabelTaken
	ErrInvalid              = store.ErrInvalid
	ErrExpired              = errors.New("account: the admin token has expired")
	ErrReadOnly             = errors.New("account: the admin token is read-only")
)

// AdminStore is what administrators' operations need of the store, on
// top of Store.
type AdminStore interface {
	Store
	AddUser(ctx context.Context, name string, mfa store.MFAState) (store.User, error)
	GetUser(ctx context.Context, name string) (store.User, error)
	DeleteUser(ctx context.Context, name string) error
	SetAdmin(ctx context.Context, name string, admin bool) error
	IsAdmin(ctx context.Context, name string) (bool, error)
	ListUserPage(ctx context.Context, q store.UserQuery) ([]store.UserSummary, error)
	CountUsers(ctx context.Context, search string) (int, error)
	RevokeAllIDs(ctx context.Context, user string) ([]int64, error)
	SetAllowAppPasswords(ctx context.Context, allow bool) error
	AuditPage(ctx context.Context, f store.AuditFilter, after store.AuditCursor, limit int) ([]store.AuditEvent, store.AuditCursor, error)
	Rollout(ctx context.Context, since time.Time) ([]store.RolloutRow, error)
	CreateAdminToken(ctx context.Context, name, createdBy string, readOnly bool, expires *time.Time) (store.AdminToken, string, error)
	ListAdminTokens(ctx context.Context) ([]store.AdminToken, error)
	RevokeAdminToken(ctx context.Context, name string) error
	FindAdminToken(ctx context.Context, token string) (store.AdminToken, error)
}

// Admin performs administrators' operations: the command line, the admin
// pages and the JSON API all call these, so that each rule, message and
// audit event is written once. It is safe for concurrent use.
type Admin struct {
	*Service
	st        AdminStore
	checkName func(name string) error
	knownOnly bool
	closeLive func(id int64) int
}

// AdminOptions configures NewAdmin.
type AdminOptions struct {
	Store      AdminStore
	Now        func() time.Time
	AuditError func(error) // see Options
	// CheckName refuses a login name the configuration forbids (e.g. one
	// holding the upstream's master-user separator); nil accepts all.
	CheckName func(name string) error
	// KnownUsersOnly refuses an app password for a user without a row
	// (policy.default_mfa is disabled), so that a typo does not become a
	// user.
	KnownUsersOnly bool
	// CloseLive closes the live sessions opened with an app password
	// (proxy/revoke's Registry.Revoke); nil leaves it to the registry's
	// watch of the store.
	CloseLive func(id int64) int
}

// NewAdmin returns the administrators' operations.
func NewAdmin(o AdminOptions) *Admin {
	return &Admin{Service: New(Options{Store: o.Store, Now: o.Now, AuditError: o.AuditError}), st: o.Store, checkName: o.CheckName,
		knownOnly: o.KnownUsersOnly, closeLive: o.CloseLive}
}

func (d *Admin) nameProblem(name string) error {
	if d.checkName == nil {
		return nil
	}
	return d.checkName(name)
}

// Users returns a page of users with their app-password count and last
// sign-in (keyset paging: pass the last name of a page as q.After).
func (d *Admin) Users(ctx context.Context, q UserQuery) ([]UserSummary, error) {
	return d.st.ListUserPage(ctx, q)
}

// CountUsers returns how many users match search.
func (d *Admin) CountUsers(ctx context.Context, search string) (int, error) {
	return d.st.CountUsers(ctx, search)
}

// User returns one user with the admin flag and app-password count.
func (d *Admin) User(ctx context.Context, name string) (UserSummary, error) {
	u, err := d.st.GetUser(ctx, name)
	if err != nil {
		return UserSummary{}, err
	}
	page, err := d.st.ListUserPage(ctx, UserQuery{Name: u.Name, Limit: 1})
	if err != nil {
		return UserSummary{}, err
	}
	if len(page) == 1 {
		return page[0], nil
	}
	return UserSummary{User: u}, nil
}

// AddUser adds a user in state mfa ("" means the store's default).
func (d *Admin) AddUser(ctx context.Context, a Actor, name string, mfa MFAState) (User, error) {
	detail := ""
	if mfa != "" {
		detail = "mfa=" + string(mfa)
	}
	if err := d.nameProblem(name); err != nil {
		d.record(ctx, a, "user.add", name, detail, err)
		return User{}, err
	}
	u, err := d.st.AddUser(ctx, name, mfa)
	if err == nil {
		detail = "mfa=" + string(u.MFA)
	}
	d.record(ctx, a, "user.add", name, detail, err)
	return u, err
}

// DeleteUser deletes a user, the user's app passwords (closing live
// sessions opened with them), methods and portal sessions.
func (d *Admin) DeleteUser(ctx context.Context, a Actor, name string) error {
	aps, err := d.st.ListAppPasswords(ctx, name)
	if err == nil {
		err = d.st.DeleteUser(ctx, name)
	}
	if err == nil {
		for _, ap := range aps {
			d.close(ap.ID)
		}
	}
	d.record(ctx, a, "user.delete", name, fmt.Sprintf("app_passwords=%d", len(aps)), err)
	return err
}

func (d *Admin) close(id int64) {
	if d.closeLive != nil {
		d.closeLive(id)
	}
}

// SetMFA changes a user's MFA state (adding the user's row if missing)
// and returns the user and the state before.
func (d *Admin) SetMFA(ctx context.Context, a Actor, name string, st MFAState) (User, MFAState, error) {
	detail := "mfa=" + string(st)
	if err := d.nameProblem(name); err != nil {
		d.record(ctx, a, "user.set-mfa", name, detail, err)
		return User{}, "", err
	}
	before, err := d.st.UserMFA(ctx, name)
	if err != nil {
		d.record(ctx, a, "user.set-mfa", name, detail, err)
		return User{}, "", err
	}
	detail += " was=" + string(before)
	u, err := d.st.SetMFA(ctx, name, st)
	d.record(ctx, a, "user.set-mfa", name, detail, err)
	return u, before, err
}

// SetAdmin marks a user admin or not.
func (d *Admin) SetAdmin(ctx context.Context, a Actor, name string, admin bool) error {
	err := d.st.SetAdmin(ctx, name, admin)
	d.record(ctx, a, "user.set-admin", name, fmt.Sprintf("admin=%v", admin), err)
	return err
}

// IsAdmin reports whether the user may open the admin pages (the flag;
// the second factor is checked by the caller with Methods).
func (d *Admin) IsAdmin(ctx context.Context, name string) (bool, error) {
	return d.st.IsAdmin(ctx, name)
}

// AppPasswords lists a user's app passwords.
func (d *Admin) AppPasswords(ctx context.Context, user string) ([]AppPassword, error) {
	return d.st.ListAppPasswords(ctx, user)
}

// CreateAppPasswordFor creates an app password for user, with the same
// rules as the user's own, and returns the secret once. networks, when
// not empty, are the only networks (CIDRs) it may be used from.
func (d *Admin) CreateAppPasswordFor(ctx context.Context, a Actor, user, label string, scopes, networks []string, expires *time.Time) (AppPassword, string, error) {
	if err := d.knownUser(ctx, user); err != nil {
		d.record(ctx, a, "app-password.create", user, fmt.Sprintf("label=%q", label), err)
		return AppPassword{}, "", err
	}
	return d.createAppPassword(ctx, a, user, label, scopes, networks, expires)
}

func (d *Admin) knownUser(ctx context.Context, user string) error {
	if err := d.nameProblem(user); err != nil {
		return err
	}
	_, err := d.st.GetUser(ctx, user)
	if errors.Is(err, store.ErrNotFound) && d.knownOnly {
		return unknownUser(user)
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// DeleteAppPasswordFor deletes a user's app password and closes the live
// sessions opened with it.
func (d *Admin) DeleteAppPasswordFor(ctx context.Context, a Actor, user, label string) (AppPassword, error) {
	ap, err := d.deleteAppPassword(ctx, a, user, label)
	if err == nil {
		d.close(ap.ID)
	}
	return ap, err
}

// RevokeAll deletes all of a user's app passwords and closes the live
// sessions opened with them, as a single deletion does.
func (d *Admin) RevokeAll(ctx context.Context, a Actor, user string) (int, error) {
	ids, err := d.st.RevokeAllIDs(ctx, user)
	for _, id := range ids {
		d.close(id)
	}
	d.record(ctx, a, "app-password.revoke-all", user, fmt.Sprintf("deleted=%d", len(ids)), err)
	return len(ids), err
}

// ResetMethods requires re-registration: it deletes the user's
// authenticator app, recovery codes, passkeys and portal sessions, and
// moves the state enforced back to enabled (so the user can sign in with
// the primary password and register again).
func (d *Admin) ResetMethods(ctx context.Context, a Actor, user string) error {
	err := d.st.DeleteTOTP(ctx, user)
	if errors.Is(err, store.ErrNotFound) {
		err = nil
	}
	var passkeys []Passkey
	if err == nil {
		passkeys, err = d.st.ListWebAuthn(ctx, user)
	}
	for _, p := range passkeys {
		if err == nil {
			_, err = d.st.DeleteWebAuthn(ctx, user, p.ID)
		}
	}
	if err == nil {
		_, err = d.st.DeleteWebSessions(ctx, user)
	}
	var st MFAState
	if err == nil {
		st, err = d.st.UserMFA(ctx, user)
	}
	if err == nil && st == store.MFAEnforced {
		_, err = d.st.SetMFA(ctx, user, store.MFAEnabled)
	}
	d.record(ctx, a, "mfa.reset", user, fmt.Sprintf("passkeys=%d was=%s", len(passkeys), st), err)
	return err
}

// AllowAppPasswords reads the global switch.
func (d *Admin) AllowAppPasswords(ctx context.Context) (bool, error) {
	return d.st.AllowAppPasswords(ctx)
}

// SetAllowAppPasswords sets the global switch "Allow users to create app
// passwords to sign in to non-browser apps".
// It returns the value before.
func (d *Admin) SetAllowAppPasswords(ctx context.Context, a Actor, allow bool) (bool, error) {
	detail := fmt.Sprintf("allow-app-passwords=%v", allow)
	before, err := d.st.AllowAppPasswords(ctx)
	if err == nil {
		detail += fmt.Sprintf(" was=%v", before)
		err = d.st.SetAllowAppPasswords(ctx, allow)
	}
	d.record(ctx, a, "settings.set", "", detail, err)
	return before, err
}

// Audit returns a page of at most limit events of the audit trail that f
// selects, after the cursor after, and the cursor of the next page (zero
// on the last); see store.Store.AuditPage.
func (d *Admin) Audit(ctx context.Context, f AuditFilter, after AuditCursor, limit int) ([]AuditEvent, AuditCursor, error) {
	return d.st.AuditPage(ctx, f, after, limit)
}

// Rollout returns who in state enabled still logs in with the primary
// password, since since.
func (d *Admin) Rollout(ctx context.Context, since time.Time) ([]RolloutRow, error) {
	return d.st.Rollout(ctx, since)
}

// CreateToken creates an admin token and returns it once.
func (d *Admin) CreateToken(ctx context.Context, a Actor, name string, readOnly bool, expires *time.Time) (AdminToken, string, error) {
	detail := fmt.Sprintf("read_only=%v", readOnly)
	if expires != nil {
		detail += " expires=" + expires.UTC().Format(time.RFC3339)
	}
	t, secret, err := d.st.CreateAdminToken(ctx, name, a.String(), readOnly, expires)
	d.record(ctx, a, "admin-token.create", name, detail, err)
	return t, secret, err
}

// Tokens lists the admin tokens.
func (d *Admin) Tokens(ctx context.Context) ([]AdminToken, error) {
	return d.st.ListAdminTokens(ctx)
}

// RevokeToken deletes an admin token.
func (d *Admin) RevokeToken(ctx context.Context, a Actor, name string) error {
	err := d.st.RevokeAdminToken(ctx, name)
	d.record(ctx, a, "admin-token.revoke", name, "", err)
	return err
}

// CheckToken returns the admin token whose secret is token: ErrNotFound
// for an unknown one, ErrExpired for an expired one. The caller counts
// failures in the lockout and answers them all alike.
func (d *Admin) CheckToken(ctx context.Context, token string) (AdminToken, error) {
	t, err := d.st.FindAdminToken(ctx, token)
	if err != nil {
		return AdminToken{}, err
	}
	if t.ExpiresAt != nil && !d.now().Before(*t.ExpiresAt) {
		return AdminToken{}, ErrExpired
	}
	return t, nil
}

// unknownUser is the error of an app password for a user without a row
// when users without a row cannot have one; it matches ErrNotFound.
type unknownUser string

func (u unknownUser) Error() string {
	return fmt.Sprintf("user %s does not exist (see \"passgate user list\"); check the spelling, or add the user with \"passgate user add %s --mfa enabled\"", string(u), string(u))
}

func (u unknownUser) Is(target error) bool { return target == store.ErrNotFound }

// FormatSecret writes an app password as it is shown once, in groups of
// four letters ("abcd efgh ijkl mnop").
func FormatSecret(secret string) string { return apppass.Format(secret) }

// ParseAuditCursor parses the cursor of an audit page as AuditCursor's
// String gives it; "" is the start. A malformed one matches ErrInvalid.
func ParseAuditCursor(s string) (AuditCursor, error) { return store.ParseAuditCursor(s) }
