package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
)

// Store is what the decision needs of the store. *store.Store implements it.
type Store interface {
	// LoginState reads the user's MFA state, the global switch and the
	// user's app password whose secret is secret (nil when none), in one
	// query; an invalid user name is an error matching store.ErrInvalid.
	LoginState(ctx context.Context, user, secret string) (store.LoginState, error)
	// RecordLogin records an app-password success: last use and audit
	// event in one write; ErrNotFound when the app password is gone (a
	// store.Journal queues the write and cannot tell).
	RecordLogin(ctx context.Context, id int64, u store.Usage, ev store.AuditEvent) error
	Record(ctx context.Context, ev store.AuditEvent) error
}

// Options configures an Engine.
type Options struct {
	Store           Store
	TrustedNetworks []netip.Prefix
	FailureDelay    time.Duration // default 2s; negative means none
	// ForbiddenInUser lists strings that a user name may not contain: the
	// upstream's master-user separator ("*" for Dovecot), which would
	// otherwise let "victim*master" with the master password log in as
	// victim on the upstream, bypassing MFA.
	ForbiddenInUser []string
	// Realms are the domains that the upstream folds onto local names:
	// "alice@example.test" and "alice" are one account. The decision
	// checks both spellings and applies the stricter MFA state.
	Realms []string
	Logger *slog.Logger // default: discard
	Now    func() time.Time
	// Lockout configures step 2; the zero value switches it off.
	Lockout Lockout
	// OnOutcome, when set, learns every recorded outcome, for metrics:
	// the protocol, the kind of credential ("app-password", "primary",
	// "none") and the outcome ("success", "failure", "unavailable"). It
	// must not block.
	OnOutcome func(proto, credential, outcome string)
	// OnDecision, when set, learns how long each Decide took (store and
	// hash, not the failure delay), for metrics. It must not block.
	OnDecision func(proto string, took time.Duration)
}

// Engine decides logins. It is safe for concurrent use.
type Engine struct {
	store     Store
	forbidden []string
	realms    []string
	trusted   []netip.Prefix
	delay     time.Duration
	log       *slog.Logger
	now       func() time.Time
	onOutcome func(proto, credential, outcome string)
	onDecide  func(proto string, took time.Duration)
	lock      *limiter // nil: no lockout
}

// DefaultFailureDelay is the delay before any failure reply.
const DefaultFailureDelay = 2 * time.Second

// New returns an Engine. It panics if opts.Store is nil (a wiring bug).
func New(opts Options) *Engine {
	if opts.Store == nil {
		panic("policy: New without a Store")
	}
	e := &Engine{
		store:     opts.Store,
		forbidden: append([]string(nil), opts.ForbiddenInUser...),
		realms:    append([]string(nil), opts.Realms...),
		trusted:   append([]netip.Prefix(nil), opts.TrustedNetworks...),
		delay:     opts.FailureDelay,
		log:       opts.Logger,
		now:       opts.Now,
		onOutcome: opts.OnOutcome,
		onDecide:  opts.OnDecision,
		lock:      newLimiter(opts.Lockout),
	}
	if e.delay == 0 {
		e.delay = DefaultFailureDelay
	}
	if e.delay < 0 {
		e.delay = 0
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	return e
}

// Trusted reports whether addr is in a trusted network: such clients may
// send plaintext credentials without TLS and may send a PROXY header.
func (e *Engine) Trusted(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range e.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// PlaintextAllowed reports whether a client may send a password on a
// connection without TLS (step 1).
func (e *Engine) PlaintextAllowed(client netip.AddrPort, tls bool) bool {
	return tls || e.Trusted(client.Addr())
}

// FailureDelay is the configured delay before a failure reply.
func (e *Engine) FailureDelay() time.Duration { return e.delay }

// Fail waits until a.Started + the failure delay, so that every failure
// reaches the client after the same time whatever the reason, and returns
// early only if ctx ends. Sleeping here blocks only the calling
// connection's goroutine; no shared worker is held.
func (e *Engine) Fail(ctx context.Context, a Attempt) {
	start := a.Started
	if start.IsZero() {
		start = e.now()
	}
	wait := time.Until(start.Add(e.delay))
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Decide runs the decision for one attempt. A deny is a Decision with
// Allow false; a non-nil error means the decision could not be made (the
// store failed) and the client should get a temporary failure.
func (e *Engine) Decide(ctx context.Context, a Attempt) (Decision, error) {
	if e.onDecide != nil {
		defer func(start time.Time) { e.onDecide(a.Proto, time.Since(start)) }(time.Now())
	}
	// The lockout finds the end of an attempt by the start the listener
	// gave it; without one it reserves nothing (see limiter.admit).
	callerStarted := a.Started
	if a.Started.IsZero() {
		a.Started = e.now()
	}
	user := strings.TrimSpace(a.User)
	d := Decision{User: user}
	deny := func(reason string) (Decision, error) {
		d.Allow, d.Kind, d.Reason = false, KindNone, reason
		e.audit(ctx, a, d, "failure")
		return d, nil
	}
	// Step 1.
	if !e.PlaintextAllowed(a.Client, a.TLS) {
		return deny("plaintext credentials without TLS from an untrusted network")
	}
	if user == "" || a.Secret == "" {
		return deny("empty user name or secret")
	}
	for _, f := range e.forbidden {
		if f != "" && strings.Contains(user, f) {
			return deny("user name contains the upstream's master-user separator " + strconv.Quote(f))
		}
	}
	// Step 2. A locked-out source gets the same failure as a wrong
	// secret, and its secret is not even looked at.
	if e.lock != nil {
		if why := e.lock.admit(e.lockName(user), a.Client.Addr(), callerStarted, e.now()); why != "" {
			return deny(why)
		}
	}
	// One read per name gives everything the decision needs of the
	// store. A store outage fails it alike for every secret, and a
	// secret that cannot be an app password is looked up all the same.
	names := e.aliases(user)
	secret := string(a.Secret)
	_, shaped := apppass.Normalize(secret)
	st := store.MFADisabled
	allowApp := true
	var match *store.AppPassword
	for i, n := range names {
		ls, err := e.store.LoginState(ctx, n, secret)
		if errors.Is(err, store.ErrInvalid) {
			e.finish(a, "failure")
			return deny("user name is not valid")
		}
		if err != nil {
			e.finish(a, "unavailable")
			return Decision{}, fmt.Errorf("policy: read the login state of %q: %w", n, err)
		}
		st = stronger(st, ls.MFA)
		if i == 0 {
			allowApp = ls.AllowAppPasswords
		}
		if shaped && match == nil && ls.AppPassword != nil {
			match = ls.AppPassword
		}
	}
	d.MFA = string(st)
	// Step 3.
	if match != nil {
		ap := *match
		// The secret is an app password of this user: it is not the
		// primary password, so whatever happens it must not go to the
		// upstream.
		if why := e.unusable(a, ap, allowApp, st); why != "" {
			e.finish(a, "unusable") // the right secret: not a guess
			return deny(why)
		}
		d.Allow, d.Kind = true, KindAppPassword
		d.User = ap.User // the stored name, not the client's spelling
		d.AppPasswordID, d.Label = ap.ID, ap.Label
		d.Reason = "app password matched"
		u := store.Usage{At: e.now(), Addr: a.Client.String(), Proto: a.Proto, Client: a.ClientName}
		wctx, cancel := e.writeCtx(ctx)
		err := e.store.RecordLogin(wctx, ap.ID, u, e.event(a, d, "success"))
		cancel()
		if errors.Is(err, store.ErrNotFound) {
			e.finish(a, "unusable")
			return deny("app password " + ap.Label + " was deleted during the login")
		}
		if err != nil {
			e.log.LogAttrs(ctx, slog.LevelError, "audit write failed", slog.Any("err", err))
		}
		e.finish(a, "success")
		e.logDecision(ctx, a, d, "success")
		return d, nil
	}
	// Step 4.
	if st == store.MFAEnforced {
		e.finish(a, "failure")
		return deny("no app password matched and MFA is enforced: primary password refused without contacting the upstream")
	}
	d.Allow, d.Kind = true, KindPrimary
	d.Reason = "primary password, to be verified by the upstream"
	return d, nil
}

// finish ends an attempt that step 2 admitted: outcome "failure" (a
// wrong secret) counts towards the lockout, "success" makes the source
// familiar, anything else ("unavailable", "unusable") counts nothing.
// An attempt is finished once; later calls do nothing.
func (e *Engine) finish(a Attempt, outcome string) {
	if e.lock != nil {
		e.lock.finish(e.lockName(a.User), a.Client.Addr(), a.Started, e.now(), outcome)
	}
}

// lockName is the name the lockout counts a user under: one for every
// spelling of the account that policy.realms folds ("alice@example.test"
// and "alice" are one), so that spellings do not multiply the budget.
func (e *Engine) lockName(user string) string {
	user = strings.TrimSpace(user)
	if local, ok := e.inRealm(user); ok {
		return local
	}
	return user
}

// inRealm returns the local part of user when its domain is one of
// Options.Realms ("alice" for "alice@example.test").
func (e *Engine) inRealm(user string) (local string, ok bool) {
	local, domain, found := strings.Cut(user, "@")
	if !found || local == "" {
		return "", false
	}
	for _, r := range e.realms {
		if strings.EqualFold(domain, r) {
			return local, true
		}
	}
	return "", false
}

// unusable returns why a matching app password may not be used now, or ""
// when it may.
func (e *Engine) unusable(a Attempt, ap store.AppPassword, allow bool, st store.MFAState) string {
	switch {
	case !allow:
		return "app password matched but app passwords are switched off"
	case ap.Expired(e.now()):
		return "app password " + ap.Label + " expired"
	case !ap.HasScope(a.Proto):
		return "app password " + ap.Label + " lacks scope " + a.Proto
	case st == store.MFADisabled:
		return "app password " + ap.Label + " matched but MFA is disabled for the user"
	}
	return ""
}

// aliases returns the names under which user may be known to the store:
// the name itself and, with Options.Realms, the same account with or
// without a realm the upstream folds ("alice@example.test" and "alice").
// The strictest MFA state of them all applies, so that a spelling the
// mail server maps onto an enforced user cannot bypass MFA.
func (e *Engine) aliases(user string) []string {
	names := []string{user}
	if len(e.realms) == 0 {
		return names
	}
	if strings.Contains(user, "@") {
		if local, ok := e.inRealm(user); ok {
			names = append(names, local)
		}
		return names
	}
	for _, r := range e.realms {
		names = append(names, user+"@"+r)
	}
	return names
}

// stronger returns the stricter of two MFA states.
func stronger(a, b store.MFAState) store.MFAState {
	rank := func(s store.MFAState) int {
		switch s {
		case store.MFAEnforced:
			return 2
		case store.MFAEnabled:
			return 1
		}
		return 0
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// Unavailable records an attempt that ended in a temporary failure: the
// decision could not be made (err from Decide) or the upstream could not
// be reached. The listener answers it after Fail, with its protocol's
// temporary-failure reply, the same whatever the secret was.
func (e *Engine) Unavailable(ctx context.Context, a Attempt, cause error) {
	e.finish(a, "unavailable")
	d := Decision{Reason: "temporary failure"}
	if cause != nil {
		d.Reason += ": " + cause.Error()
	}
	e.audit(ctx, a, d, "unavailable")
}

// PrimaryResult records the upstream's verdict on a provisional primary
// password allow. ok is true when the upstream accepted the login.
//
// Called with an app-password decision and ok false, it records that the
// upstream refused the login on the user's behalf (a master login for a
// user the upstream does not know): the success that Decide recorded is
// then followed by this failure.
func (e *Engine) PrimaryResult(ctx context.Context, a Attempt, d Decision, ok bool) {
	if d.Kind == KindAppPassword {
		if !ok {
			d.Allow = false
			d.Reason = "app password accepted, but the upstream refused the login on the user's behalf"
			e.audit(ctx, a, d, "failure")
		}
		return
	}
	if ok {
		e.finish(a, "success")
		if d.MFA == string(store.MFAEnabled) {
			d.Reason = "primary password accepted; would be refused once enforced"
		} else {
			d.Reason = "primary password accepted by the upstream"
		}
		e.audit(ctx, a, d, "success")
		return
	}
	e.finish(a, "failure")
	d.Allow = false
	d.Reason = "primary password refused by the upstream"
	if !a.Started.IsZero() && e.delay > 0 {
		if took := e.now().Sub(a.Started); took > e.delay {
			// The reply now comes later than an enforced user's refusal
			// would: the difference tells the two apart.
			e.log.LogAttrs(ctx, slog.LevelWarn, "upstream refused after the failure delay; failures of MFA users and others can be told apart by timing",
				slog.String("proto", a.Proto), slog.Duration("took", took), slog.Duration("failure_delay", e.delay),
				slog.String("fix", "set the upstream's own failure delay to 0 (Dovecot: auth_failure_delay = 0) or raise policy.failure_delay"))
		}
	}
	e.audit(ctx, a, d, "failure")
}

func (e *Engine) audit(ctx context.Context, a Attempt, d Decision, outcome string) {
	wctx, cancel := e.writeCtx(ctx)
	defer cancel()
	if err := e.store.Record(wctx, e.event(a, d, outcome)); err != nil {
		e.log.LogAttrs(ctx, slog.LevelError, "audit write failed", slog.Any("err", err))
	}
	e.logDecision(ctx, a, d, outcome)
}

// writeCtx is the context of an audit write: it must not be cut short by
// a client that hangs up.
func (e *Engine) writeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

// event is the audit event of an outcome. It never holds the secret.
func (e *Engine) event(a Attempt, d Decision, outcome string) store.AuditEvent {
	detail := "credential=" + d.Credential() + " tls=" + boolStr(a.TLS) + " reason=" + d.Reason
	if a.ClientName != "" {
		detail += " client=" + a.ClientName
	}
	return store.AuditEvent{
		Time:    e.now(),
		Actor:   a.Proto + ":" + a.Client.String(),
		Action:  "login",
		Subject: strings.TrimSpace(a.User),
		Outcome: outcome,
		Detail:  detail,
	}
}

func (e *Engine) logDecision(ctx context.Context, a Attempt, d Decision, outcome string) {
	if e.onOutcome != nil {
		e.onOutcome(a.Proto, d.Kind.String(), outcome)
	}
	level := slog.LevelInfo
	if outcome != "success" {
		level = slog.LevelWarn
	}
	e.log.LogAttrs(ctx, level, "auth decision",
		slog.String("proto", a.Proto), slog.String("user", strings.TrimSpace(a.User)),
		slog.String("remote_addr", a.Client.String()), slog.Bool("tls", a.TLS),
		slog.String("decision", outcome), slog.String("credential", d.Credential()),
		slog.String("reason", d.Reason))
}

func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
