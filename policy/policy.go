// Package policy makes the authentication decision.
//
// On the path of a login it sits between a listener (proxy/imapfront,
// proxy/smtpfront, proxy/ldapfront), which has read a user name and a secret
// off the wire, and the upstream login (backends/*upstream). It knows users,
// MFA states, app passwords, scopes and trusted networks; it knows nothing
// of any protocol's wire format and does no I/O of its own except through
// the Store interface it declares.
//
// The steps are those of design.md "The decision":
//
//  1. plaintext credentials without TLS are refused unless the client is in
//     a trusted network;
//  2. a source with too many recent failures is locked out for a while
//     (Lockout: per user and address, per address, per user; smart, and
//     off unless configured);
//  3. the secret is checked against the user's app passwords (scope for the
//     protocol, not expired, app passwords allowed);
//  4. if none matches and the user is enforced, deny without contacting the
//     upstream; otherwise allow provisionally, to be verified by the
//     upstream with the primary password (passthrough);
//  5. every outcome is an audit event; a success updates the app
//     password's last use.
//
// A deny is a Decision, not an error: an error from Decide means that no
// decision could be made (the store is down) and the client gets a
// temporary failure. Whatever the reason of a deny, the client gets the same
// reply after the same delay (Engine.Fail).
package policy

import (
	"log/slog"
	"net/netip"
	"strconv"
	"time"
)

// Protocols, also the app-password scopes.
const (
	IMAP = "imap"
	SMTP = "smtp"
	LDAP = "ldap"
)

// Secret is a password as the client sent it. It never prints: String and
// LogValue return "REDACTED". Use string(s) where the bytes are needed.
type Secret string

// String returns "REDACTED".
func (Secret) String() string { return "REDACTED" }

// LogValue returns "REDACTED", so a Secret cannot reach a log.
func (Secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// GoString returns "REDACTED", for %#v.
func (Secret) GoString() string { return "REDACTED" }

// MarshalText returns "REDACTED", so that encoding/json and slog's JSON
// handler print a Secret in a struct field as REDACTED too.
func (Secret) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }

// Attempt is one login attempt as a listener saw it.
type Attempt struct {
	Proto      string         // IMAP, SMTP or LDAP
	User       string         // login name as sent
	Secret     Secret         // password as sent
	Client     netip.AddrPort // the client's address (after PROXY protocol)
	TLS        bool           // the connection is protected by TLS
	ClientName string         // e.g. from IMAP ID; may be empty
	// Started is when the credentials arrived. Set it, and pass the same
	// Attempt to Decide and then to PrimaryResult or Unavailable: the
	// failure delay counts from it, and the lockout finds the end of an
	// attempt by it. Zero: Decide uses its own clock, and the lockout
	// does not count attempts under way.
	Started time.Time
}

// LogValue logs the attempt without its secret.
func (a Attempt) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("proto", a.Proto),
		slog.String("user", a.User),
		slog.String("remote_addr", a.Client.String()),
		slog.Bool("tls", a.TLS),
	)
}

// Kind says which credential a login used.
type Kind int

// Credential kinds.
const (
	KindNone        Kind = iota // denied
	KindAppPassword             // an app password matched
	KindPrimary                 // the primary password, to be verified by the upstream
)

// String returns "none", "app-password" or "primary".
func (k Kind) String() string {
	switch k {
	case KindAppPassword:
		return "app-password"
	case KindPrimary:
		return "primary"
	}
	return "none"
}

// Decision is the outcome of Decide.
//
// When Allow is true and Kind is KindAppPassword, the listener logs in to
// the upstream on the user's behalf (master user, XCLIENT, service account).
// When Allow is true and Kind is KindPrimary, the allow is provisional: the
// listener must log in to the upstream with the client's own user name and
// secret (passthrough) and report the result with Engine.PrimaryResult; if
// the upstream refuses, the client gets the uniform failure.
type Decision struct {
	Allow         bool
	Kind          Kind
	User          string // the user name to log in upstream with
	AppPasswordID int64  // KindAppPassword only
	Label         string // KindAppPassword only
	MFA           string // the user's MFA state at decision time
	Reason        string // why, for logs and audit only; never sent to the client
}

// Credential describes the credential for logs: "app-password:12 (Outlook)" or "primary".
func (d Decision) Credential() string {
	if d.Kind == KindAppPassword {
		return "app-password:" + strconv.FormatInt(d.AppPasswordID, 10) + " (" + d.Label + ")"
	}
	return d.Kind.String()
}
