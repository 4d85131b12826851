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
// proxy/relay (the registry that closes sessions of deleted app passwords),
// never another front or a backend.
//
// Why no LDAP server library: go-ldap has no server side; jimlambrt/gldap has
// no message size or in-flight caps and no Compare, ModifyDN or Abandon;
// vjeantet/ldapserver allocates whatever length a client declares and logs
// every packet, bind passwords included; nmcclain/ldap is unmaintained and
// not served by the module proxy. So the listener is built on
// github.com/go-asn1-ber/asn1-ber with three rules of its own:
//
//   - The length in a message's header is checked against a per-connection
//     cap (Options.MaxMessageBytes) before anything is allocated from it
//     (readMessage). ber.MaxPacketLengthBytes is not used: it is a
//     process-wide variable shared with the go-ldap client.
//   - The envelope (message ID, protocolOp, controls) is split without
//     copying or decoding the operation (parseMessage); only BindRequest and
//     ExtendedRequest are decoded, with asn1-ber, from bytes already bounded
//     by the cap. Responses are encoded with asn1-ber.
//   - Searches and compares are relayed as raw BER: passgate rewrites the
//     message ID and adds the proxied authorization control, and passes the
//     upstream's answers back with the client's message ID, without
//     re-encoding them. Nothing the directory says (entries, referrals,
//     paged-results cookies, response controls, matched DNs) is lost or
//     reinterpreted, and unknown controls pass through. A client may not send
//     its own proxied authorization control after an app-password bind.
//
// Every failed bind, whatever the reason, gets invalidCredentials (49) with
// one fixed diagnostic message after the decision's failure delay. A
// password bind before TLS from an untrusted client gets
// confidentialityRequired (13); anonymous and unauthenticated (name without
// password) binds get unwillingToPerform (53), as RFC 4513 §5.1 recommends,
// unless the options allow them; a decision that cannot be made or an
// upstream that cannot be reached gets unavailable (52).
//
// Several requests may be in flight on one connection: they are answered
// with their own message IDs; a request that arrives while a bind is
// pending waits behind it, and a bind waits for the requests before it.
// Abandon and Unbind are acted on as soon as they arrive.
package ldapfront
