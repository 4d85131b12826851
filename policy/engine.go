package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
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

// Groups tells whether a user belongs to a directory group whose members
// are enforced without a row in the store (policy.mfa_groups). An error
// means the directory could not be asked: the decision then cannot tell
// and fails as a temporary failure. *ldapupstream.Groups implements it.
type Groups interface {
	IsMember(ctx context.Context, user string) (bool, error)
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
	// MFAGroups, when set, makes a member of its groups enforced whatever
	// the store says (nil: no groups).
	MFAGroups Groups
	// Counters is where the lockout counts: the store, shared by every
	// instance; nil counts in this process's memory.
	Counters Counters
	// OnOutcome, when set, learns every recorded outcome, for metrics:
	// the protocol, the kind of credential and the outcome. It must not
	// block.
	OnOutcome func(proto Proto, credential Credential, outcome Outcome)
	// OnDecision, when set, learns how long each Decide took (store and
	// hash, not the failure delay), for metrics. It must not block.
	OnDecision func(proto Proto, took time.Duration)
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
	onOutcome func(Proto, Credential, Outcome)
	onDecide  func(Proto, time.Duration)
	lock      *limiter   // nil: no lockout
	both      bothReader // the Store and the Counters are one database; nil: not
	groups    Groups     // nil: no mfa groups
	inFlight  atomic.Int64
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
		lock:      newLimiter(opts.Lockout, opts.Counters),
		groups:    opts.MFAGroups,
	}
	// One database behind both: a login reads its counters and its
	// login state in one statement.
	if sb, ok := opts.Store.(bothReader); ok && e.lock != nil {
		if cb, ok := opts.Counters.(bothReader); ok && sb.Backing() != nil && sb.Backing() == cb.Backing() {
			e.both = sb
		}
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

// InFlight is the number of Logins returned by Decide or Undecided and
// not finished yet. A listener that forgot to finish one leaves it above
// zero once its connections are closed; the listeners' tests check it.
func (e *Engine) InFlight() int { return int(e.inFlight.Load()) }

// newLogin starts a Login for a.
func (e *Engine) newLogin(a Attempt) *Login {
	if a.Received.IsZero() {
		a.Received = e.now()
	}
	a.Secret = "" // the Login never needs it again
	e.inFlight.Add(1)
	return &Login{e: e, a: a, user: strings.TrimSpace(a.User)}
}

// Undecided returns a Login that the listener ends without a decision:
// it refused the attempt itself (a malformed exchange, a name that maps
// to no user; reason says why, for the audit) or could not go on before
// deciding (the upstream is down: finish with Unreachable). It is not
// Allowed; finish it like any other.
func (e *Engine) Undecided(a Attempt, reason string) *Login {
	l := e.newLogin(a)
	l.reason = reason
	return l
}

// Decide runs the decision for one attempt and returns its Login, which
// the caller must finish (Login.Finish) whatever happens next. A deny is
// a Login that is not Allowed; a non-nil error means the decision could
// not be made (the store failed): the Login returned with it finishes as
// a temporary failure.
func (e *Engine) Decide(ctx context.Context, a Attempt) (*Login, error) {
	if e.onDecide != nil {
		defer func(start time.Time) { e.onDecide(a.Proto, time.Since(start)) }(time.Now())
	}
	l := e.newLogin(a)
	a.Received = l.a.Received
	user := l.user
	deny := func(reason string) (*Login, error) {
		l.reason = reason
		return l, nil
	}
	// Step 1.
	if !e.PlaintextAllowed(a.Client, a.TLS || (a.Local && a.Client.Addr().Unmap().IsLoopback())) {
		l.plaintext = true
		return deny("plaintext credentials without TLS from an untrusted network")
	}
	if user == "" || (a.Secret == "" && (a.Factor == Password || a.Factor == Token)) {
		return deny("empty user name or secret")
	}
	for _, f := range e.forbidden {
		if f != "" && strings.Contains(user, f) {
			return deny("user name contains the upstream's master-user separator " + strconv.Quote(f))
		}
	}
	// One read per name gives everything the decision needs of the
	// store (with the lockout's counters, the first name's is read in
	// the same statement). A store outage fails it alike for every
	// secret, and a secret that cannot be an app password is looked up
	// all the same.
	names := e.aliases(user)
	secret := string(a.Secret)
	if a.Proto == Web {
		secret = "" // app passwords never sign in to the portal
	}
	var first *firstRead
	if e.both != nil && a.Factor != SecondFactor && a.Factor != Token {
		first = &firstRead{db: e.both, user: names[0], secret: secret}
	}
	// Step 2. A locked-out source gets the same failure as a wrong
	// secret, and its secret is not used (a login state read with the
	// counters is dropped).
	if e.lock != nil {
		adm, why, err := e.lock.admit(ctx, e.lockName(user), a.Client.Addr(), string(a.Secret), e.now(), first, a.lockKind())
		if err != nil {
			l.err = fmt.Errorf("policy: read the lockout of %q: %w", user, err)
			l.reason = "temporary failure: " + l.err.Error()
			return l, l.err
		}
		if why != "" {
			return deny(why)
		}
		l.adm = adm
	}
	if a.Factor == SecondFactor {
		// The portal checks the code itself and finishes the Login with
		// its verdict, which the lockout counts like a password's.
		l.allowed, l.cred = true, SecondFactorCredential
		l.reason = "second factor, to be verified by the portal"
		return l, nil
	}
	if a.Factor == Token {
		// The API checks the token itself and finishes the Login with
		// its verdict, which the lockout counts like a password's.
		l.allowed, l.cred = true, TokenCredential
		l.reason = "admin token, to be verified by the API"
		return l, nil
	}
	_, shaped := apppass.Normalize(secret)
	st := store.MFADisabled
	allowApp := true
	var match *store.AppPassword
	for i, n := range names {
		var ls store.LoginState
		var err error
		if i == 0 && first != nil && first.done {
			ls = first.state
		} else {
			ls, err = e.store.LoginState(ctx, n, secret)
		}
		if errors.Is(err, store.ErrInvalid) {
			l.settle(ctx, Failure)
			return deny("user name is not valid")
		}
		if err != nil {
			l.settle(ctx, Unavailable)
			l.err = fmt.Errorf("policy: read the login state of %q: %w", n, err)
			l.reason = "temporary failure: " + l.err.Error()
			return l, l.err
		}
		if ls.User != "" && (l.stored == "" || stronger(st, ls.MFA) != st) {
			l.stored = ls.User
		}
		st = stronger(st, ls.MFA)
		if i == 0 {
			allowApp = ls.AllowAppPasswords
		}
		if shaped && match == nil && ls.AppPassword != nil && a.Proto != Web {
			match = ls.AppPassword
		}
	}
	// A member of an mfa group is enforced. The directory is not asked
	// for an app password of a user with MFA on (its answer changes
	// nothing there), and is asked for every other secret, also of a user
	// enforced already: while the directory is down, every such login
	// then fails alike, as a temporary failure, instead of telling by
	// its answer which users the store enforces.
	if e.groups != nil && (match == nil || st == store.MFADisabled) {
		member, err := e.groupMember(ctx, names)
		if err != nil {
			// Fail closed, but not as a wrong password: the user may
			// be a member (so the primary password must not pass), and
			// may as well not be (so a refusal would be a lie that
			// makes the client forget a right password).
			l.settle(ctx, Unavailable)
			l.err = fmt.Errorf("policy: read the mfa groups for %q: %w", user, err)
			l.reason = "temporary failure: " + l.err.Error()
			return l, l.err
		}
		if member {
			st = store.MFAEnforced
			l.group = true
		}
	}
	l.mfa = st
	// Step 3.
	if match != nil {
		ap := *match
		// The secret is an app password of this user: it is not the
		// primary password, so whatever happens it must not go to the
		// upstream. A refusal names it.
		l.cred, l.appID, l.label = AppPassword, ap.ID, ap.Label
		if why := e.unusable(a, ap, allowApp, st); why != "" {
			l.settle(ctx, 0) // the right secret: not a guess
			return deny(why)
		}
		l.allowed = true
		l.user = ap.User // the stored name, not the client's spelling
		l.reason = "app password matched"
		if l.adm != nil && l.adm.user != "" {
			// An app password proves more than a password: its address
			// is familiar to the user's codes too.
			l.adm.alsoFamiliar = secondFactorKey(l.adm.user)
		}
		l.settle(ctx, Success) // the note rides on the event below
		u := store.Usage{At: e.now(), Addr: a.Client.String(), Proto: string(a.Proto), Client: a.ClientName}
		wctx, cancel := e.writeCtx(ctx)
		err := e.store.RecordLogin(wctx, ap.ID, u, e.event(l, Success))
		cancel()
		if errors.Is(err, store.ErrNotFound) {
			l.allowed = false
			l.settle(ctx, 0)
			return deny("app password " + ap.Label + " was deleted during the login")
		}
		if err != nil {
			e.log.LogAttrs(ctx, slog.LevelError, "audit write failed", slog.Any("err", err))
		}
		l.recorded = true
		e.logDecision(ctx, l, Success)
		return l, nil
	}
	// Step 4.
	if st == store.MFAEnforced && a.Proto != Web {
		l.settle(ctx, Failure)
		if l.group {
			return deny("no app password matched and MFA is enforced by membership of an mfa group: primary password refused without contacting the upstream")
		}
		return deny("no app password matched and MFA is enforced: primary password refused without contacting the upstream")
	}
	if a.Proto == Web && st == store.MFADisabled {
		// The portal is for users with MFA; the others have nothing to
		// manage there. A guess all the same.
		l.settle(ctx, Failure)
		return deny("portal sign-in of a user whose MFA is disabled")
	}
	if a.Proto == Web && l.stored != "" {
		l.user = l.stored
	}
	l.allowed, l.cred = true, Primary
	l.reason = "primary password, to be verified by the upstream"
	return l, nil
}

// groupMember reports whether any of the names is a member of an mfa
// group.
func (e *Engine) groupMember(ctx context.Context, names []string) (bool, error) {
	for _, n := range names {
		ok, err := e.groups.IsMember(ctx, n)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
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
	case !ap.HasScope(string(a.Proto)):
		return "app password " + ap.Label + " lacks scope " + string(a.Proto)
	case !ap.AllowedFrom(a.Client.Addr()):
		return "app password " + ap.Label + " is not allowed from " + a.Client.Addr().Unmap().String() + " (its networks: " + prefixes(ap.Networks) + ")"
	case st == store.MFADisabled:
		return "app password " + ap.Label + " matched but MFA is disabled for the user"
	}
	return ""
}

// prefixes lists networks for the audit.
func prefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
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

// writeCtx is the context of an audit write: it must not be cut short by
// a client that hangs up.
func (e *Engine) writeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

func (e *Engine) audit(ctx context.Context, l *Login, outcome Outcome) {
	wctx, cancel := e.writeCtx(ctx)
	defer cancel()
	if err := e.store.Record(wctx, e.event(l, outcome)); err != nil {
		e.log.LogAttrs(ctx, slog.LevelError, "audit write failed", slog.Any("err", err))
	}
	e.logDecision(ctx, l, outcome)
}

// event is the audit event of an outcome. It never holds the secret.
func (e *Engine) event(l *Login, outcome Outcome) store.AuditEvent {
	a := l.a
	detail := "credential=" + l.Describe() + " tls=" + boolStr(a.TLS) + " reason=" + l.reason
	if a.Local && !a.TLS {
		detail += " loopback=yes"
	}
	if a.ClientName != "" {
		detail += " client=" + a.ClientName
	}
	ev := store.AuditEvent{
		Time:       e.now(),
		Actor:      string(a.Proto) + ":" + a.Client.String(),
		Action:     store.ActionLogin,
		Subject:    strings.TrimSpace(a.User),
		Outcome:    outcome.String(),
		Detail:     detail,
		Protocol:   string(a.Proto),
		ClientPort: int(a.Client.Port()),
		TLS:        a.TLS,
		ClientName: a.ClientName,
		Credential: l.cred.String(),
		Reason:     l.reason,
		Lockout:    l.note,
	}
	if a.Client.Addr().IsValid() {
		ev.ClientAddr = a.Client.Addr().Unmap().String()
	}
	if l.cred == AppPassword {
		ev.AppPasswordID, ev.Label = l.appID, l.label
	}
	return ev
}

func (e *Engine) logDecision(ctx context.Context, l *Login, outcome Outcome) {
	if e.onOutcome != nil {
		e.onOutcome(l.a.Proto, l.metricCredential(outcome), outcome)
	}
	level := slog.LevelInfo
	if outcome != Success {
		level = slog.LevelWarn
	}
	h := e.log.Handler()
	if !h.Enabled(ctx, level) {
		return
	}
	// The record as Logger.LogAttrs makes it, but without the caller's
	// program counter (runtime.Callers, about a tenth of the line's
	// cost): a handler with AddSource prints no source for this line.
	a := l.a
	r := slog.NewRecord(time.Now(), level, "auth decision", 0)
	r.AddAttrs(
		slog.String("proto", string(a.Proto)), slog.String("user", strings.TrimSpace(a.User)),
		slog.String("remote_addr", a.Client.String()), slog.Bool("tls", a.TLS),
		slog.String("decision", outcome.String()), slog.String("credential", l.Describe()),
		slog.String("reason", l.reason))
	if err := h.Handle(ctx, r); err != nil {
		return // as Logger.LogAttrs: a handler's error is not the login's
	}
}

func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
