// Package policy makes the authentication decision and owns every login
// from the moment its credentials arrive until its reply is sent.
//
// On the path of a login it sits between a listener (proxy/imapfront,
// proxy/smtpfront, proxy/ldapfront, the portal's web sign-in), which has
// read a user name and a secret off the wire, and the upstream login
// (backends/*upstream). It knows users, MFA states, app passwords, scopes
// and trusted networks; it knows nothing of any protocol's wire format and
// does no I/O of its own except through the Store interface it declares.
//
// A login is one value: Engine.Decide returns a *Login, the listener asks
// the upstream when the Login is Allowed, and Login.Finish records the
// upstream's Result, settles the lockout, waits out the uniform failure
// delay and returns the Class of reply the client gets. Each listener
// keeps only its table from Class to wire reply.
//
// The steps are those of design.md "The decision":
//
//  1. plaintext credentials without TLS are refused unless the client is in
//     a trusted network;
//  2. a source with too many recent failures is locked out for a while
//     (Lockout: per user and address, per address, per user; smart; the
//     counts in Counters, the store shared by every instance);
//  3. the secret is checked against the user's app passwords (scope for the
//     protocol, not expired, app passwords allowed);
//  4. if none matches and the user is enforced, deny without contacting the
//     upstream; otherwise allow provisionally, to be verified by the
//     upstream with the primary password (passthrough);
//  5. every outcome is an audit event; a success updates the app
//     password's last use.
//
// A deny is a Login that is not Allowed, not an error: an error from
// Decide means that no decision could be made (the store is down), and the
// Login it returns alongside finishes as a temporary failure. Whatever the
// reason of a deny, the client gets the same reply after the same delay.
package policy

import (
	"log/slog"
	"net/netip"
	"strconv"
	"time"

	"github.com/passgate/passgate/backends/secret"
)

// Proto is the protocol of a login; the mail protocols are also the
// app-password scopes.
type Proto string

// Protocols.
const (
	IMAP Proto = "imap"
	SMTP Proto = "smtp"
	LDAP Proto = "ldap"
	// Web is the portal's sign-in: the primary password of a user with
	// MFA, then the second factor (Attempt.Factor). App passwords never
	// sign in to the portal.
	Web Proto = "web"
	// API is the admin JSON API: an admin token (Factor Token), which the
	// API checks itself; the lockout counts its failures like a password's.
	API Proto = "api"
)

// String returns the protocol's name, as in metrics and audit events.
func (p Proto) String() string { return string(p) }

// Factor says which factor an Attempt presents.
type Factor int

// Factors.
const (
	// Password is a password: an app password or the primary one.
	Password Factor = iota
	// SecondFactor is the portal's second factor (TOTP, WebAuthn), which
	// the portal checks itself: Decide runs only step 1 and the lockout.
	SecondFactor
	// Token is an admin token of the JSON API, checked by the API: Decide
	// runs only step 1 and the lockout.
	Token
)

// Secret is a password as the client sent it: the one redacting type of
// backends/secret, which prints as "REDACTED" everywhere.
type Secret = secret.Secret

// Attempt is one login attempt as a listener saw it.
type Attempt struct {
	Proto      Proto          // IMAP, SMTP, LDAP or Web
	Factor     Factor         // Password unless Web's SecondFactor
	User       string         // login name as sent
	Secret     Secret         // password as sent
	Client     netip.AddrPort // the client's address (after PROXY protocol)
	TLS        bool           // the connection is protected by TLS
	ClientName string         // e.g. from IMAP ID; may be empty
	// Received is when the credentials arrived: the failure delay counts
	// from it. Zero: Decide uses its own clock.
	Received time.Time
	// Local says the credentials went in plain text from a loopback
	// address to a loopback address (the portal's plain HTTP on
	// loopback): they never crossed a network, so step 1 lets them
	// through as it lets TLS, while the audit still says tls=no. It
	// counts only when Client is a loopback address.
	Local bool
	// Passkey says that a Web SecondFactor is a passkey's assertion,
	// which cannot be guessed (not a code): the lockout counts it as a
	// login, not with the codes, so that guessed codes never lock a
	// user's passkeys, and its success makes the address familiar to
	// the codes too.
	Passkey bool
}

// lockKind is what a counts as in the lockout.
func (a Attempt) lockKind() lockKind {
	switch {
	case a.Proto == Web && a.Factor == Password:
		return lockPortalPassword
	case a.Factor == SecondFactor && a.Passkey:
		return lockPasskey
	case a.Factor == SecondFactor:
		return lockCode
	case a.Factor == Token:
		return lockToken
	}
	return lockLogin
}

// LogValue logs the attempt without its secret.
func (a Attempt) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("proto", string(a.Proto)),
		slog.String("user", a.User),
		slog.String("remote_addr", a.Client.String()),
		slog.Bool("tls", a.TLS),
	)
}

// Credential says which credential a login used.
type Credential int

// Credential kinds.
const (
	NoCredential           Credential = iota // nothing matched
	AppPassword                              // an app password matched
	Primary                                  // the primary password, to be verified upstream (or by the portal)
	SecondFactorCredential                   // the portal's second factor
	TokenCredential                          // an admin token of the JSON API
)

// String returns "none", "app-password", "primary" or "second-factor",
// the values of metrics labels and audit text.
func (k Credential) String() string {
	switch k {
	case AppPassword:
		return "app-password"
	case Primary:
		return "primary"
	case SecondFactorCredential:
		return "second-factor"
	case TokenCredential:
		return "admin-token"
	}
	return "none"
}

// Outcome is what became of a login, as recorded.
type Outcome int

// Outcomes.
const (
	Success     Outcome = iota + 1 // the login succeeded
	Failure                        // refused: a wrong or unusable secret, a lockout
	Unavailable                    // a temporary failure: store or upstream down
)

// String returns "success", "failure" or "unavailable", as in audit
// events and metrics labels.
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Unavailable:
		return "unavailable"
	}
	return "unknown"
}

// Class is the kind of reply a login gets; each listener maps it to its
// wire reply.
type Class int

// Reply classes.
const (
	ClassOK        Class = iota // logged in
	ClassDenied                 // the uniform failure
	ClassTemporary              // a temporary failure: try again later
	// ClassNeedTLS is step 1's refusal: a password sent in clear from an
	// untrusted network. It is answered at once (the reply says only
	// that TLS is needed, whatever the secret).
	ClassNeedTLS
)

// String names the class, for logs.
func (c Class) String() string {
	switch c {
	case ClassOK:
		return "ok"
	case ClassDenied:
		return "denied"
	case ClassTemporary:
		return "temporary"
	case ClassNeedTLS:
		return "need-tls"
	}
	return "unknown"
}

// Result is the upstream's answer to a login, given to Login.Finish:
// Accepted, Refused, NotAsked or Unreachable(err).
type Result interface {
	verdict() (Verdict, error)
}

// Verdict is a Result without a cause.
type Verdict int

// Verdicts.
const (
	// NotAsked: no upstream was asked (a denied Login, or one the
	// listener refused itself).
	NotAsked Verdict = iota
	// Accepted: the upstream (or the portal's verifier) accepted.
	Accepted
	// Refused: the upstream (or the portal's verifier) refused.
	Refused
	unreached
)

func (v Verdict) verdict() (Verdict, error) { return v, nil }

type unreachable struct{ err error }

func (u unreachable) verdict() (Verdict, error) { return unreached, u.err }

// Unreachable is the Result of an upstream that could not be reached or
// failed before answering: the client gets a temporary failure.
func Unreachable(err error) Result { return unreachable{err} }

// describe is a credential for logs and audit: "app-password:12
// (Outlook)", "primary" or "none".
func describe(k Credential, id int64, label string) string {
	if k == AppPassword {
		return "app-password:" + strconv.FormatInt(id, 10) + " (" + label + ")"
	}
	return k.String()
}
