// Package ldapfront is passgate's LDAP listener: the first stop of an LDAP
// simple bind on its way through passgate.
//
// On the path of a login it reads LDAPv3 messages from applications (a wiki,
// a VPN, a printer, ldapsearch), answers StartTLS and WhoAmI itself, maps the
// bind name (a DN matched against user_dn_templates, a user principal name
// alice@example.test, or DOMAIN\alice) to a user name, asks the decision
// (policy, through the Decider interface declared here) and then, through
// the Upstream interface declared here and implemented by
// backends/ldapupstream, either verifies a primary password with the
// directory itself or, after an app-password bind, relays the client's
// searches and compares to the directory as passgate's service account with
// the RFC 4370 proxied authorization control naming the user, so that the
// directory's ACLs apply as if the user had bound. It imports policy and
// the shared front pieces (proxy/lifecycle, and proxy/revoke, the registry
// that closes sessions of deleted app passwords), never another front or a
// backend.
//
// Why no LDAP server library: go-ldap has no server side; jimlambrt/gldap has
// no message size or in-flight caps and no Compare, ModifyDN or Abandon;
// vjeantet/ldapserver allocates whatever length a client declares and logs
// every packet, bind passwords included; nmcclain/ldap is unmaintained and
// not served by the module proxy. So the listener reads and writes BER
// itself (backends/ldapwire), with three rules:
//
//   - The length in a message's header is checked against a per-connection
//     cap (Options.MaxMessageBytes) before anything is allocated from it
//     (readMessage). ber.MaxPacketLengthBytes is not used: it is a
//     process-wide variable shared with the go-ldap client.
//   - The envelope (message ID, protocolOp, controls) is split without
//     copying or decoding the operation (parseMessage); only BindRequest and
//     ExtendedRequest are decoded, in place, without an element tree.
//   - Searches and compares are relayed as raw BER: passgate rewrites the
//     message ID and adds the proxied authorization control, and passes the
//     upstream's answers back with the client's message ID, without
//     re-encoding them. Nothing the directory says (entries, referrals,
//     paged-results cookies, response controls, matched DNs) is lost or
//     reinterpreted, and unknown controls pass through. A client may not send
//     its own proxied authorization control after an app-password bind.
//     The answers the upstream session hands over from one read of the
//     directory's socket go to the client in one write, when the session
//     is about to wait for more (Session.OnIdle), with no timer.
//
// Bind names. A DN that matches a template with a plain ASCII user part
// (letters, digits, '.', '_', '-') is used as the template filled in with
// that part. Any other name (an alias or OID attribute type such as
// userid=alice or 0.9.2342.19200300.100.1.1=alice, fullwidth or other
// non-ASCII letters, escapes, a DN of no template) is resolved before any
// password is sent: passgate's service account does a base-scope search
// for it, and the DN of the entry the directory returns is mapped with the
// templates; that user is decided on, and that DN is bound as. A name
// naming no entry, or any such name when no service account is
// configured, fails like a wrong password. An application's account
// (cn=wiki,…, no template) resolves to itself and is decided on by its DN.
// A UPN user@domain is accepted only for a domain in ldap.upn_domains when
// that list is set (the user is the local part, or the whole UPN with
// UPNAsUser); when it is empty, the domain is kept and the whole UPN is the
// user, so alice@other.test is never alice. DOMAIN\user is refused when
// ldap.upn_domains is set and is otherwise the whole name as the user.
// After an app-password bind the identity (proxied authorization and
// WhoAmI) is the decision's user put into the first template; a name of
// another template is refused.
//
// Every failed bind, whatever the reason, gets invalidCredentials (49) with
// one fixed diagnostic message after the decision's failure delay. A
// password bind before TLS from an untrusted client gets
// confidentialityRequired (13); anonymous and unauthenticated (name without
// password) binds get unwillingToPerform (53), as RFC 4513 §5.1 recommends,
// unless the options allow them; a decision that cannot be made or an
// upstream that cannot be reached gets unavailable (52), after the same
// failure delay and recorded (policy.Login.Finish with Unreachable). In relay mode the
// directory must be known to be up before the decision, so that
// "directory down" does not depend on the secret or the MFA state: the
// connection's own live session, or a new session opened by any
// connection within the last second, or else a session opened there and
// then. Without the first, the session opens when an operation first
// needs it, so that an application that only binds costs the directory
// no connection per bind. The price is a window of a second after the
// directory starts refusing new connections in which a bind of a user
// without MFA gets 52 and one of an MFA user 49.
//
// Limits: a client that has not bound is closed PreBindTimeout after it
// connected, however much it sends, and may send messages of at most 64
// KiB; at most 4 MiB of messages wait for the executor per connection,
// 64 KiB before a bind has succeeded (the reader stops reading beyond
// that; one message always fits), and relayed requests are not
// kept in memory while their answers come.
//
// Several requests may be in flight on one connection: they are answered
// with their own message IDs; a request that arrives while a bind is
// pending waits behind it, and a bind waits for the requests before it.
// Abandon and Unbind are acted on as soon as they arrive; a bind cannot be
// abandoned (RFC 4511 §4.11) and is answered all the same.
package ldapfront
