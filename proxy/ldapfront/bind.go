package ldapfront

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/relay"
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
	if !c.srv.opts.Decider.PlaintextAllowed(c.remote, tlsOn) {
		// The password came in clear: the decision's step 1 refuses and
		// audits it, without any lookup.
		_, _ = c.srv.opts.Decider.Decide(c.ctx, policy.Attempt{Proto: policy.LDAP, User: name, Client: c.remote, Started: started})
		c.respond(m.ID, opBindRequest, resultConfidentialityRequired, msgConfidentiality)
		return
	}
	a := policy.Attempt{
		Proto: policy.LDAP, User: name, Secret: policy.Secret(req.password),
		Client: c.remote, TLS: tlsOn, Started: started,
	}
	bn, mapped := c.srv.names.mapName(name)
	if !mapped {
		c.logRefused(a, "bind name maps to no user (a DN that does not parse, a UPN domain not in ldap.upn_domains, DOMAIN\\user while ldap.upn_domains is set)")
		c.fail(m, a)
		return
	}
	a.User = bn.User
	// The directory must be known to take new sessions before the
	// decision, so that a temporary failure is the same answer whatever
	// the secret was and whatever the user's MFA state is (see reachable
	// for how long "known" lasts).
	if c.srv.opts.Mode == ModeRelay {
		if err := c.reachable(); err != nil {
			c.unavailable(m, a, "open", msgUnavailable, err)
			return
		}
	}
	if !plainTemplated(bn) {
		var ok bool
		var why string
		bn, ok, why, err = c.resolve(bn, name)
		if err != nil {
			c.unavailable(m, a, "resolve", msgUnavailable, err)
			return
		}
		if !ok {
			c.logRefused(a, why)
			c.fail(m, a)
			return
		}
		a.User = bn.User
	}
	d, err := c.srv.opts.Decider.Decide(c.ctx, a)
	if err != nil {
		c.unavailable(m, a, "decision", msgDecisionFailed, err)
		return
	}
	if !d.Allow {
		c.fail(m, a)
		return
	}
	switch d.Kind {
	case policy.KindAppPassword:
		c.appBind(m, a, d, bn)
	case policy.KindPrimary:
		c.primaryBind(m, a, d, bn, req.password)
	default:
		c.fail(m, a)
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
func (c *conn) appBind(m message, a policy.Attempt, d policy.Decision, bn boundName) {
	id := identity{kind: identApp, user: d.User, appID: d.AppPasswordID}
	switch {
	case len(c.srv.names.templates) == 0:
		id.authzID = proxyAuthzUserPrefix + d.User
	case bn.Template != 0 || d.User == "":
		// The name matched another template than the first (or none):
		// the first template filled with the user would name another
		// entry than the one the client named.
		c.logRefused(a, "app-password bind with a name that does not match the first ldap.user_dn_templates entry")
		c.fail(m, a)
		return
	default:
		id.dn = c.srv.names.fill(d.User)
		id.authzID = proxyAuthzDNPrefix + id.dn
	}
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
func (c *conn) primaryBind(m message, a policy.Attempt, d policy.Decision, bn boundName, password []byte) {
	dn := bn.DN
	if dn == "" {
		c.logRefused(a, "primary-password bind without a DN to verify it with")
		c.fail(m, a)
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
		c.unavailable(m, a, "bind", msgUnavailable, err)
		return
	}
	if !ok {
		c.srv.opts.Decider.PrimaryResult(c.ctx, a, d, false)
		c.fail(m, a)
		return
	}
	if authzID == "" {
		authzID = proxyAuthzDNPrefix + dn
	}
	c.srv.opts.Decider.PrimaryResult(c.ctx, a, d, true)
	if c.srv.opts.Mode == ModeRelay {
		c.sessState = sessAccount
	}
	c.setIdentity(identity{kind: identPrimary, user: d.User, dn: dn, authzID: authzID})
	c.respond(m.ID, opBindRequest, resultSuccess, "")
}

// unavailable answers a bind that met a temporary failure with
// unavailable (52), after the same failure delay as a refused bind and
// with the attempt recorded, so that the reply says nothing about the
// secret.
func (c *conn) unavailable(m message, a policy.Attempt, op, msg string, err error) {
	c.srv.log.LogAttrs(c.ctx, slog.LevelError, "ldap bind failed for a temporary reason",
		slog.String("proto", policy.LDAP), slog.Uint64("conn_id", c.id),
		slog.String("remote_addr", c.remote.String()), slog.String("user", a.User),
		slog.String("upstream", op), slog.Any("err", err))
	c.srv.opts.Decider.Unavailable(c.ctx, a, err)
	c.srv.opts.Decider.Fail(c.ctx, a)
	c.respond(m.ID, opBindRequest, resultUnavailable, msg)
}

// fail answers a refused bind: the same bytes after the same delay,
// whatever the reason. After MaxBindFailures the connection is closed.
func (c *conn) fail(m message, a policy.Attempt) {
	c.srv.opts.Decider.Fail(c.ctx, a)
	c.respond(m.ID, opBindRequest, resultInvalidCredentials, failureMessage)
	c.failures++
	if c.failures >= c.srv.opts.MaxBindFailures {
		c.stop(errors.New("too many failed binds"))
	}
}

func (c *conn) logRefused(a policy.Attempt, reason string) {
	c.srv.log.LogAttrs(c.ctx, slog.LevelWarn, bindFailureLogMessage,
		slog.String("proto", policy.LDAP), slog.Uint64("conn_id", c.id),
		slog.String("remote_addr", c.remote.String()), slog.String("user", a.User),
		slog.String("reason", reason))
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
		c.user = id.user
	}
	switch id.kind {
	case identApp:
		c.credential = "app-password:" + strconv.FormatInt(id.appID, 10)
	case identPrimary:
		c.credential = "primary"
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
		if errors.Is(context.Cause(tctx), relay.ErrRevoked) {
			c.srv.log.LogAttrs(context.Background(), slog.LevelInfo, "ldap session revoked",
				slog.String("proto", policy.LDAP), slog.Uint64("conn_id", c.id),
				slog.String("remote_addr", c.remote.String()), slog.String("user", id.user))
			c.stop(relay.ErrRevoked)
		}
	})
	c.mu.Lock()
	c.release = rel
	c.mu.Unlock()
}
