// Package verify checks a user's primary password for the Security info
// portal's sign-in, the one place where passgate itself must know whether
// a primary password is right (the protocol listeners leave that to the
// upstream).
//
// On the path of a portal sign-in it comes after the decision's TLS and
// lockout steps: proxy/portal asks a Verifier that cmd wires, chosen by
// web.verify: IMAP logs in to the IMAP upstream with the user's own
// password and logs out; LDAP binds as the user's DN from
// ldap.user_dn_templates; Hashes checks an argon2id hash that "passgate
// user set-password" stored. Each tells a wrong password (ErrRefused) from
// an upstream that cannot answer (any other error), so that an outage is
// never counted as a guess.
package verify

import (
	"context"
	"errors"
	"net/netip"
)

// ErrRefused is returned when the password is wrong or the user unknown.
var ErrRefused = errors.New("verify: password refused")

// Verifier checks a primary password. Verify returns nil when it is right,
// an error matching ErrRefused when it is wrong or the user unknown, and
// any other error when it could not tell. client is the address of the
// person signing in; a verifier passes it on where its server can take it
// (IMAP), so that the server counts failures against that person.
type Verifier interface {
	Verify(ctx context.Context, user, password string, client netip.AddrPort) error
}
