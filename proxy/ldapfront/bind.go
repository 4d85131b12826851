package ldapfront

import (
	"context"
	"errors"
	"log/slog"
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
	upstreamWhoAmIPrefix  = "dn:"
	proxyAuthzUserPrefix  = "u:"
	proxyAuthzDNPrefix    = "dn:"
	bindFailureLogMessage = "ldap bind refused"
)

// bind runs one BindRequest. Nothing is in flight upstream while it runs.
func (c *conn) bind(m message) {
	started := time.Now()
	req, err := decodeBind(m.op)
	if err != nil {
		c.disconnect(resultProtocolError, "malformed LDAP message")
		return
	}
	// A bind replaces the identity; a failed bind leaves the connection
	// anonymous (RFC 4513 §4).
	c.setIdentity(identity{})
	switch {
	case req.version != 3:
		c.respond(m.id, opBindRequest, resultProtocolError, msgVersion)
		return
	case !req.simple:
		c.respond(m.id, opBindRequest, resultAuthMethodNotSupported, msgSASL)
		return
	}
	name := strings.TrimSpace(req.name)
	switch {
	case name == "" && len(req.password) == 0:
		if !c.srv.opts.AllowAnonymous {
			c.respond(m.id, opBindRequest, resultUnwillingToPerform, msgAnonymousBind)
			return
		}
		c.acceptAnonymous(m, false)
		return
	case name != "" && len(req.password) == 0:
		if !c.srv.opts.AllowUnauthenticated {
			c.respond(m.id, opBindRequest, resultUnwillingToPerform, msgUnauthenticated)
			return
		}
		c.acceptAnonymous(m, true)
		return
	}
	tlsOn := c.tls.Load()
	if !c.srv.opts.Decider.PlaintextAllowed(c.remote, tlsOn) {
		c.respond(m.id, opBindRequest, resultConfidentialityRequired, msgConfidentiality)
		return
	}
	bn, mapped := c.srv.names.mapName(name)
	a := policy.Attempt{
		Proto: policy.LDAP, User: bn.User, Secret: policy.Secret(req.password),
		Client: c.remote, TLS: tlsOn, Started: started,
	}
	if !mapped {
		a.User = name
		c.logRefused(a, "bind name maps to no user (a DN that does not parse, or a UPN domain not in ldap.upn_domains)")
		c.fail(m, a)
		return
	}
	d, err := c.srv.opts.Decider.Decide(c.ctx, a)
	if err != nil {
		c.srv.log.LogAttrs(c.ctx, slog.LevelError, "ldap decision failed",
			slog.String("proto", policy.LDAP), slog.Uint64("conn_id", c.id),
			slog.String("remote_addr", c.remote.String()), slog.String("user", a.User), slog.Any("err", err))
		c.respond(m.id, opBindRequest, resultUnavailable, msgDecisionFailed)
		return
	}
	if !d.Allow {
		c.fail(m, a)
		return
	}
	switch d.Kind {
	case policy.KindAppPassword:
		id := identity{kind: identApp, user: d.User, dn: bn.DN, appID: d.AppPasswordID}
		if bn.DN != "" {
			id.authzID = proxyAuthzDNPrefix + bn.DN
		} else {
			id.authzID = proxyAuthzUserPrefix + d.User
		}
		c.setIdentity(id)
		c.respond(m.id, opBindRequest, resultSuccess, "")
	case policy.KindPrimary:
		c.primaryBind(m, a, d, bn, name, req.password)
	default:
		c.fail(m, a)
	}
}

// acceptAnonymous answers an allowed anonymous or unauthenticated bind.
func (c *conn) acceptAnonymous(m message, unauth bool) {
	c.setIdentity(identity{unauth: unauth})
	c.authed.Store(true)
	c.respond(m.id, opBindRequest, resultSuccess, "")
}

// primaryBind has the directory check a primary password that the
// decision allowed provisionally.
func (c *conn) primaryBind(m message, a policy.Attempt, d policy.Decision, bn boundName, name string, password []byte) {
	dn := bn.DN
	if dn == "" {
		dn = name // a UPN or DOMAIN\user as sent (Active Directory accepts both)
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
			if err == nil && ok && !plainTemplated(bn) {
				authzID, err = s.WhoAmI(ctx)
			}
		}
		if err != nil {
			c.dropSession()
		}
	}
	if err != nil {
		c.srv.log.LogAttrs(c.ctx, slog.LevelError, "ldap upstream failed",
			slog.String("proto", policy.LDAP), slog.Uint64("conn_id", c.id),
			slog.String("remote_addr", c.remote.String()), slog.String("user", a.User),
			slog.String("upstream", "bind"), slog.Any("err", err))
		c.respond(m.id, opBindRequest, resultUnavailable, msgUnavailable)
		return
	}
	if !ok {
		c.srv.opts.Decider.PrimaryResult(c.ctx, a, d, false)
		c.fail(m, a)
		return
	}
	// The directory may accept another spelling of a person's name than
	// the one decided on: an alias attribute type (userid=alice), a value
	// it normalises (uid=ＡＬＩＣＥ in fullwidth letters binds as alice in
	// slapd). The directory's own answer to WhoAmI is mapped again, and if
	// it names someone else the attempt is decided again for that user, so
	// that no spelling gets around MFA.
	if canon, known := c.srv.names.canonicalUser(authzID); known && !plainTemplated(bn) && !strings.EqualFold(canon, a.User) {
		a2 := a
		a2.User = canon
		d2, err := c.srv.opts.Decider.Decide(c.ctx, a2)
		if err != nil {
			c.dropSession()
			c.respond(m.id, opBindRequest, resultUnavailable, msgDecisionFailed)
			return
		}
		if !d2.Allow || d2.Kind != policy.KindPrimary {
			c.dropSession()
			c.logRefused(a2, "bind name is another spelling of this user's entry; decided again for the user")
			c.fail(m, a2)
			return
		}
		a, d = a2, d2
	}
	if authzID == "" {
		authzID = proxyAuthzDNPrefix + dn
	}
	c.srv.opts.Decider.PrimaryResult(c.ctx, a, d, true)
	if c.srv.opts.Mode == ModeRelay {
		c.sessState = sessAccount
	}
	c.setIdentity(identity{kind: identPrimary, user: d.User, dn: dn, authzID: authzID})
	c.respond(m.id, opBindRequest, resultSuccess, "")
}

// fail answers a refused bind: the same bytes after the same delay,
// whatever the reason. After MaxBindFailures the connection is closed.
func (c *conn) fail(m message, a policy.Attempt) {
	c.srv.opts.Decider.Fail(c.ctx, a)
	c.respond(m.id, opBindRequest, resultInvalidCredentials, failureMessage)
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
	c.mu.Unlock()
	if release != nil {
		release()
	}
	if id.kind != identAnonymous {
		c.authed.Store(true)
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

// plainTemplated reports whether a bind name needs no check of how the
// directory spelled it: it went through a template and its user part is
// plain ASCII (letters, digits, '.', '_', '-'), which a directory
// normalises only by case, as the store does. Anything else (a DN that
// matched no template, non-ASCII letters, spaces, escapes) is checked with
// WhoAmI after the bind, at the cost of one more round trip.
func plainTemplated(bn boundName) bool {
	if !bn.Templated || bn.User == "" {
		return false
	}
	for i := 0; i < len(bn.User); i++ {
		switch ch := bn.User[i]; {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '.', ch == '_', ch == '-':
		default:
			return false
		}
	}
	return true
}
