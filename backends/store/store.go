// Package store keeps passgate's state: users and their MFA states, app
// passwords (as keyed hashes only), global settings and the audit trail.
//
// On the path of a login it is the last stop of the decision: policy asks
// the store, in one query (LoginState), for the user's MFA state, the
// global switch and the app password that matches a presented secret (an
// indexed lookup by keyed hash), and records the outcome in the audit
// trail through a Journal, which commits the writes of many logins at
// once in the background. The admin command line and, later, the portal
// change the same rows, synchronously.
//
// Two implementations share one schema and one contract test suite:
// PostgreSQL through sqlx and lib/pq (production; several passgate instances
// may share it) and SQLite through modernc.org/sqlite (the embedded default,
// pure Go, one file). Migrations are embedded and applied by Migrate; two
// instances migrating one PostgreSQL at once are serialised by an advisory
// lock.
//
// This package imports only backends/apppass of passgate's packages.
package store

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// MFAState is a user's multi-factor state.
type MFAState string

// The three MFA states of design.md.
const (
	MFADisabled MFAState = "disabled" // primary password works everywhere
	MFAEnabled  MFAState = "enabled"  // primary password still works, audited as "would be refused"
	MFAEnforced MFAState = "enforced" // only app passwords open IMAP, SMTP and LDAP
)

// ParseMFAState parses s as an MFA state.
func ParseMFAState(s string) (MFAState, error) {
	switch st := MFAState(strings.ToLower(strings.TrimSpace(s))); st {
	case MFADisabled, MFAEnabled, MFAEnforced:
		return st, nil
	}
	return "", fmt.Errorf("unknown MFA state %q: use disabled, enabled or enforced", s)
}

// Scopes an app password may carry.
const (
	ScopeIMAP = "imap"
	ScopeSMTP = "smtp"
	ScopeLDAP = "ldap"
)

// AllScopes returns the default scope list of a new app password (a new
// slice each time, so that no caller can change the default).
func AllScopes() []string { return []string{ScopeIMAP, ScopeSMTP, ScopeLDAP} }

// Sentinel errors that callers branch on.
var (
	ErrNotFound             = errors.New("not found")
	ErrExists               = errors.New("already exists")
	ErrLimitReached         = errors.New("limit reached")
	ErrMFADisabled          = errors.New("MFA is disabled for this user")
	ErrAppPasswordsDisabled = errors.New("app passwords are switched off")
	ErrLabelTaken           = errors.New("label already in use")
	ErrInvalid              = errors.New("invalid value")
	ErrKeyMismatch          = errors.New("key file does not match the store")
	ErrNoKey                = errors.New("server key not loaded")
)

// User is a row of the users table.
type User struct {
	Name      string    `json:"name"`
	MFA       MFAState  `json:"mfa"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// AppPassword is an app password's metadata. The secret itself is never
// kept; Hash is its keyed hash and is never printed.
type AppPassword struct {
	ID             int64      `json:"id"`
	User           string     `json:"user"`
	Label          string     `json:"label"`
	Scopes         []string   `json:"scopes"`
	CreatedAt      time.Time  `json:"created_at"`
	ExpiresAt      *time.Time `json:"expires_at,omitempty"`
	LastUsedAt     *time.Time `json:"last_used_at,omitempty"`
	LastUsedAddr   string     `json:"last_used_addr,omitempty"`
	LastUsedProto  string     `json:"last_used_proto,omitempty"`
	LastUsedClient string     `json:"last_used_client,omitempty"`
	// Networks are where it may be used from; none: anywhere.
	Networks []netip.Prefix `json:"networks,omitempty"`
	Hash     []byte         `json:"-"`
}

// AllowedFrom reports whether the app password may be used from addr.
func (a AppPassword) AllowedFrom(addr netip.Addr) bool {
	if len(a.Networks) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range a.Networks {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// HasScope reports whether the app password may be used for scope.
func (a AppPassword) HasScope(scope string) bool {
	for _, s := range a.Scopes {
		if s == scope {
			return true
		}
	}
	return false
}

// Expired reports whether the app password has expired at now.
func (a AppPassword) Expired(now time.Time) bool {
	return a.ExpiresAt != nil && !now.Before(*a.ExpiresAt)
}

// NewAppPassword is the input of CreateAppPassword.
type NewAppPassword struct {
	User      string
	Label     string     // 1–64 characters, unique per user ignoring case
	Scopes    []string   // nil means AllScopes
	ExpiresAt *time.Time // nil: never expires
	// Networks are CIDRs (or single addresses) the app password may be
	// used from; nil: anywhere.
	Networks []string
}

// Usage is what a successful login records on the app password it used.
type Usage struct {
	At     time.Time
	Addr   string // client address, host:port
	Proto  string // imap, smtp, ldap
	Client string // client name, e.g. from IMAP ID; may be empty
}

// AuditEvent is one row of the audit trail. It never holds a secret.
//
// Login events fill the structured fields (Protocol to Reason); Actor and
// Detail of a structured login are derived from them on reading, in the
// form of events recorded before schema version 5. Account changes keep
// Actor and Detail as given.
type AuditEvent struct {
	ID      int64     `json:"id"`
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`   // who acted: "cli:root", "imap:203.0.113.9:51234", …
	Action  string    `json:"action"`  // "login", "app-password.create", "user.set-mfa", …
	Subject string    `json:"subject"` // the user acted upon
	Outcome string    `json:"outcome"` // "success", "failure", "denied", …
	Detail  string    `json:"detail,omitempty"`

	// Login reports, on reading, whether the event is a login event
	// (Action "login"), kept for the login retention.
	Login bool `json:"login,omitempty"`
	// Protocol is the login's protocol: imap, smtp, ldap, web.
	Protocol string `json:"protocol,omitempty"`
	// ClientAddr and ClientPort are the client's IP address and port.
	ClientAddr string `json:"client_addr,omitempty"`
	ClientPort int    `json:"client_port,omitempty"`
	// TLS reports whether the login's connection was protected.
	TLS bool `json:"tls,omitempty"`
	// ClientName is the name the client gave (IMAP ID), if any.
	ClientName string `json:"client_name,omitempty"`
	// Credential is CredentialAppPassword, CredentialPrimary or
	// CredentialNone (no credential was accepted or identified).
	Credential string `json:"credential,omitempty"`
	// AppPasswordID and Label name the app password of the login, if any.
	AppPasswordID int64  `json:"app_password_id,omitempty"`
	Label         string `json:"label,omitempty"`
	// Reason says why the decision went as it did, for operators only.
	Reason string `json:"reason,omitempty"`
	// Lockout, on a login's success, is what it changes in the shared
	// lockout, applied in the same transaction as the event (no write
	// of its own). Never printed.
	Lockout *LockoutNote `json:"-"`
}

// ActionLogin is the Action of a login event.
const ActionLogin = "login"

// Credentials an audit event names.
const (
	CredentialAppPassword = "app-password"
	CredentialPrimary     = "primary"
	CredentialNone        = "none"
	// CredentialSecondFactor is the portal's second factor.
	CredentialSecondFactor = "second-factor"
)

// Kinds of audit event, kept for different times (AuditRetention).
const (
	AuditKindLogin  = "login"
	AuditKindChange = "change"
)

// AuditFilter selects audit events; zero fields match everything.
type AuditFilter struct {
	User          string    // the subject, ignoring case
	Kind          string    // AuditKindLogin or AuditKindChange
	Protocol      string    // imap, smtp, ldap, web
	Outcome       string    // success, failure, …
	Credential    string    // CredentialAppPassword, CredentialPrimary or CredentialNone
	AppPasswordID int64     // one app password, by id
	Label         string    // app passwords by label (exact)
	Addr          string    // the client's IP address
	Since         time.Time // at or after
	Until         time.Time // before
	Newest        bool      // AuditPage: newest first
	Limit         int       // Audit only: the newest Limit events; 0: all
}

// Options configures Open.
type Options struct {
	Driver          string   // "sqlite" or "postgres"
	DSN             string   // a file name for sqlite, a URL or key=value string for postgres
	KeyFile         string   // server key; created (0600) when missing on a new store
	MaxAppPasswords int      // 0 means 40
	DefaultMFA      MFAState // state of a user without a row; "" means disabled
}
