package ldapfront

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/connlimit"
	"github.com/passgate/passgate/proxy/observe"
	"github.com/passgate/passgate/proxy/revoke"
)

// Replies to binds. failureMessage is the one text of every failed bind,
// whatever the reason.
const (
	failureMessage        = "invalid credentials"
	msgConfidentiality    = "a password bind needs TLS: use StartTLS or LDAPS"
	msgAnonymousBind      = "anonymous bind is not allowed"
	msgUnauthenticated    = "unauthenticated bind (a name without a password) is not allowed"
	msgVersion            = "only LDAPv3 is supported"
	msgSASL               = "only simple binds are supported"
	msgDecisionFailed     = "passgate cannot check credentials right now; try again later"
	proxyAuthzUserPrefix  = "u:"
	proxyAuthzDNPrefix    = "dn:"
	bindFailureLogMessage = "ldap bind refused"
)

// bind runs one BindRequest. Nothing is in flight upstream while it runs.
func (c *conn) bind(m message) {
	started := time.Now()
	req, err := decodeBind(m.Op)
	if err != nil {
		c.disconnect(resultProtocolError, "malformed LDAP message")
		return
	}
	// A bind replaces the identity; a failed bind leaves the connection
	// anonymous (RFC 4513 §4).
	c.setIdentity(identity{})
	switch {
	case req.version != 3:
		c.respond(m.ID, opBindRequest, resultProtocolError, msgVersion)
		return
	case !req.simple:
		c.respond(m.ID, opBindRequest, resultAuthMethodNotSupported, msgSASL)
		return
	}
	name := strings.TrimSpace(req.name)
	switch {
	case name == "" && len(req.password) == 0:
		if !c.srv.opts.AllowAnonymous {
			c.respond(m.ID, opBindRequest, resultUnwillingToPerform, msgAnonymousBind)
			return
		}
		c.acceptAnonymous(m, false)
		return
	case name != "" && len(req.password) == 0:
		if !c.srv.opts.AllowUnauthenticated {
			c.respond(m.ID, opBindRequest, resultUnwillingToPerform, msgUnauthenticated)
			return
		}
		c.acceptAnonymous(m, true)
		return
	}
	tlsOn := c.tls.Load()
	dec := c.srv.opts.Decider
	if !dec.PlaintextAllowed(c.RemoteAddr, tlsOn) {
		// The password came in clear: the decision's step 1 refuses and
		// audits it, without any lookup.
		l, _ := dec.Decide(c.ctx, policy.Attempt{Proto: policy.LDAP, User: name, Client: c.RemoteAddr, Received: started})
		c.answer(m, l, policy.NotAsked, "")
		return
	}
	a := policy.Attempt{
		Proto: policy.LDAP, User: name, Secret: policy.Secret(req.password),
		Client: c.RemoteAddr, TLS: tlsOn, Received: started,
	}
	bn, mapped := c.srv.names.mapName(name)
	if !mapped {
		c.refuse(m, dec.Undecided(a, "bind name maps to no user"), "bind name maps to no user (a DN that does not parse, a UPN domain not in ldap.upn_domains, DOMAIN\\user while ldap.upn_domains is set)")
		return
	}
	a.User = bn.User
	// The directory must be known to take new sessions before the
	// decision, so that a temporary failure is the same answer whatever
	// the secret was and whatever the user's MFA state is (see reachable
	// for how long "known" lasts).
	if c.srv.opts.Mode == ModeRelay {
		if err := c.reachable(); err != nil {
			c.unavailable(m, dec.Undecided(a, "directory unavailable"), "open", err)
			return
		}
	}
	if !plainTemplated(bn) {
		var ok bool
		var why string
		bn, ok, why, err = c.resolve(bn, name)
		if err != nil {
			c.unavailable(m, dec.Undecided(a, "directory unavailable"), "resolve", err)
			return
		}
		if !ok {
			c.refuse(m, dec.Undecided(a, why), why)
			return
		}
		a.User = bn.User
	}
	l, err := dec.Decide(c.ctx, a)
	if err != nil {
		c.unavailable(m, l, "decision", err)
		return
	}
	if !l.Allowed() {
		c.answer(m, l, policy.NotAsked, "")
		return
	}
	switch l.Credential() {
	case policy.AppPassword:
		c.appBind(m, l, bn)
	default:
		c.primaryBind(m, l, bn, req.password)
	}
}

// resolve asks the directory, as passgate's service account, which entry
// a bind name not in plain template form names, before any password is
// sent for it: alias attribute types (userid=alice), OIDs
// (0.9.2342.19200300.100.1.1=alice) and values the directory normalises
// (uid=ＡＬＩＣＥ in fullwidth letters) all name alice's entry, and alice is
// who is decided on. ok is false, with the reason for the log, when the
// name cannot be resolved: no such entry, a name that is not a DN and
// fills no template, or no service account to ask with. Answers are kept
// for a few seconds (resolveCache).
func (c *conn) resolve(bn boundName, name string) (out boundName, ok bool, why string, err error) {
	dn := bn.DN
	if bn.Form == formDN {
		dn = name
	}
	if dn == "" {
		return boundName{}, false, "bind name is not a DN and no ldap.user_dn_templates entry turns it into one", nil
	}
	if !c.srv.opts.Upstream.HasServiceAccount() {
		return boundName{}, false, "bind name is not in the form of ldap.user_dn_templates, and without a service account (ldap.upstream.service_dn) passgate cannot look up which entry it names", nil
	}
	entryDN, cached := c.srv.resolved.get(dn, time.Now())
	if !cached {
		ctx, cancel := context.WithTimeout(c.ctx, upstreamTimeout)
		defer cancel()
		var found bool
		entryDN, found, err = c.srv.opts.Upstream.Resolve(ctx, dn)
		if err != nil {
			return boundName{}, false, "", err
		}
		if !found {
			return boundName{}, false, "bind name names no entry of the directory", nil
		}
		c.srv.resolved.put(dn, entryDN, time.Now())
	}
	out, ok = c.srv.names.resolved(entryDN)
	if !ok {
		return boundName{}, false, "the directory's DN of the entry maps to no user", nil
	}
	return out, true, "", nil
}

// appBind accepts an app-password bind. The identity the directory sees
// (proxied authorization) and WhoAmI's answer come from the decision's
// user put into the first template, never from the client's spelling.
func (c *conn) appBind(m message, l *policy.Login, bn boundName) {
	id := identity{kind: identApp, user: l.User(), appID: l.AppPasswordID()}
	switch {
	case len(c.srv.names.templates) == 0:
		id.authzID = proxyAuthzUserPrefix + l.User()
	case bn.Template != 0 || l.User() == "":
		// The name matched another template than the first (or none):
		// the first template filled with the user would name another
		// entry than the one the client named.
		c.refuse(m, l, "app-password bind with a name that does not match the first ldap.user_dn_templates entry")
		return
	default:
		id.dn = c.srv.names.fill(l.User())
		id.authzID = proxyAuthzDNPrefix + id.dn
	}
	l.Finish(c.ctx, policy.Accepted)
	connlimit.LoggedIn(c.nc) // a session now: no longer capped as a pre-login connection
	c.setIdentity(id)
	c.respond(m.ID, opBindRequest, resultSuccess, "")
}

// acceptAnonymous answers an allowed anonymous or unauthenticated bind.
func (c *conn) acceptAnonymous(m message, unauth bool) {
	c.setIdentity(identity{unauth: unauth})
	c.markAuthed()
	c.respond(m.ID, opBindRequest, resultSuccess, "")
}

// primaryBind has the directory check a primary password that the
// decision allowed provisionally. bn is in plain template form or was
// resolved by the directory: bn.DN is the entry that was decided on.
func (c *conn) primaryBind(m message, l *policy.Login, bn boundName, password []byte) {
	dn := bn.DN
	if dn == "" {
		c.refuse(m, l, "primary-password bind without a DN to verify it with")
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, upstreamTimeout)
	defer cancel()
	var (
		authzID string
		ok      bool
		err     error
	)
	if c.srv.opts.Mode == ModeBindOnly {
		authzID, ok, err = c.srv.opts.Upstream.Verify(ctx, dn, password)
	} else {
		var s Session
		s, err = c.session()
		if err == nil {
			ok, err = s.Bind(ctx, dn, password)
			c.sessState = sessUnknown
			if err == nil && !ok {
				c.sessState = sessAnonymous
			}
		}
		if err != nil {
			c.dropSession()
		}
	}
	if err != nil {
		c.unavailable(m, l, "bind", err)
		return
	}
	if !ok {
		c.answer(m, l, policy.Refused, "")
		return
	}
	if authzID == "" {
		authzID = proxyAuthzDNPrefix + dn
	}
	l.Finish(c.ctx, policy.Accepted)
	connlimit.LoggedIn(c.nc) // a session now: no longer capped as a pre-login connection
	if c.srv.opts.Mode == ModeRelay {
		c.sessState = sessAccount
	}
	c.setIdentity(identity{kind: identPrimary, user: l.User(), dn: dn, authzID: authzID})
	c.respond(m.ID, opBindRequest, resultSuccess, "")
}

// unavailable answers a bind that met a temporary failure with
// unavailable (52), after the same failure delay as a refused bind and
// with the attempt recorded, so that the reply says nothing about the
// secret.
func (c *conn) unavailable(m message, l *policy.Login, op string, err error) {
	c.Event(c.ctx, c.srv.log, slog.LevelError, "ldap bind failed for a temporary reason",
		slog.String("user", l.User()), slog.String("upstream", op), slog.Any("err", err))
	c.answer(m, l, policy.Unreachable(err), op)
}

// refuse logs why the listener refused a bind and answers it as a
// refused one.
func (c *conn) refuse(m message, l *policy.Login, reason string) {
	c.Event(c.ctx, c.srv.log, slog.LevelWarn, bindFailureLogMessage, slog.String("user", l.User()), slog.String("reason", reason))
	c.answer(m, l, policy.NotAsked, "")
}

// answer finishes a bind that did not succeed and answers it by class:
// the same bytes after the same delay, whatever the reason. After
// MaxBindFailures refusals the connection is closed. op names the step
// of a temporary failure ("decision" has its own text).
func (c *conn) answer(m message, l *policy.Login, r policy.Result, op string) {
	c.mu.Lock()
	if l.Credential() != policy.NoCredential {
		c.User, c.Credential = l.User(), l.Credential().String()
		if l.Credential() == policy.AppPassword {
			c.Credential += ":" + strconv.FormatInt(l.AppPasswordID(), 10)
		}
	}
	if c.Outcome != observe.OutcomeRelayed {
		c.Outcome = observe.OutcomeFailed
	}
	c.mu.Unlock()
	switch l.Finish(c.ctx, r) {
	case policy.ClassNeedTLS:
		c.respond(m.ID, opBindRequest, resultConfidentialityRequired, msgConfidentiality)
	case policy.ClassTemporary:
		msg := msgUnavailable
		if op == "decision" {
			msg = msgDecisionFailed
		}
		c.respond(m.ID, opBindRequest, resultUnavailable, msg)
	default:
		c.respond(m.ID, opBindRequest, resultInvalidCredentials, failureMessage)
		c.failures++
		if c.failures >= c.srv.opts.MaxBindFailures {
			c.stop(errors.New("too many failed binds"))
		}
	}
}

// setIdentity replaces the connection's identity and, for an app
// password, registers the connection so that deleting the app password
// closes it.
func (c *conn) setIdentity(id identity) {
	c.ident = id
	c.mu.Lock()
	release := c.release
	c.release = nil
	if id.user != "" {
		c.User = id.user
	}
	switch id.kind {
	case identApp:
		c.Credential, c.Outcome = "app-password:"+strconv.FormatInt(id.appID, 10), observe.OutcomeRelayed
	case identPrimary:
		c.Credential, c.Outcome = "primary", observe.OutcomeRelayed
	}
	c.mu.Unlock()
	if release != nil {
		release()
	}
	if id.kind != identAnonymous {
		c.markAuthed()
	}
	reg := c.srv.opts.Registry
	if id.kind != identApp || reg == nil {
		return
	}
	tctx, rel := reg.Track(c.ctx, id.appID)
	context.AfterFunc(tctx, func() {
		if errors.Is(context.Cause(tctx), revoke.ErrRevoked) {
			c.Event(context.Background(), c.srv.log, slog.LevelInfo, "ldap session revoked", slog.String("user", id.user))
			c.stop(revoke.ErrRevoked)
		}
	})
	c.mu.Lock()
	c.release = rel
	c.mu.Unlock()
}
