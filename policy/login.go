package policy

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// Login is one login attempt from the decision to the reply. Decide (or
// Undecided) returns it; the listener asks the upstream when it is
// Allowed and then calls Finish exactly once, on every path, with the
// upstream's Result. A Login holds what the lockout reserved for it until
// then: one never finished keeps counting as an attempt under way, which
// Engine.InFlight shows and the listeners' tests check.
type Login struct {
	e *Engine
	a Attempt // without its secret

	user    string // to log in upstream with
	stored  string // the name as stored, when the user has a row
	mfa     store.MFAState
	group   bool // mfa is enforced by an mfa group's membership
	cred    Credential
	appID   int64
	label   string
	reason  string
	allowed bool
	// plaintext: refused by step 1, answered at once.
	plaintext bool
	// err: the decision could not be made.
	err error
	// recorded: the success was audited by Decide (an app password).
	recorded bool
	adm      *admission // what the lockout reserved; nil once settled
	// note is what the success changes in the lockout, carried by its
	// audit event.
	note *store.LockoutNote
	done atomic.Bool
}

// Allowed reports whether the decision lets the login go on to the
// upstream (or, for Web, to the portal's own check).
func (l *Login) Allowed() bool { return l.allowed }

// User is the name to log in upstream with: the stored name for an app
// password or a portal sign-in, else the client's spelling, trimmed.
func (l *Login) User() string { return l.user }

// MFA is the user's MFA state at decision time ("" when not read).
func (l *Login) MFA() store.MFAState { return l.mfa }

// Credential is the kind of credential that matched: AppPassword (also
// for one refused as unusable), Primary, SecondFactorCredential or
// NoCredential.
func (l *Login) Credential() Credential { return l.cred }

// AppPasswordID is the matching app password's id, 0 for other kinds.
func (l *Login) AppPasswordID() int64 { return l.appID }

// Label is the matching app password's label, "" for other kinds.
func (l *Login) Label() string { return l.label }

// Reason says why the login was allowed or denied, for logs and the
// audit only: never send it to the client.
func (l *Login) Reason() string { return l.reason }

// Describe is the credential for logs: "app-password:12 (Outlook)",
// "primary", "second-factor" or "none".
func (l *Login) Describe() string { return describe(l.cred, l.appID, l.label) }

// settle ends what the lockout reserved for the login: a Failure counts,
// a Success makes the address familiar, anything else counts nothing.
func (l *Login) settle(ctx context.Context, o Outcome) {
	if l.adm == nil {
		return
	}
	adm := l.adm
	l.adm = nil
	wctx := ctx
	if o == Failure {
		// Only a failure writes (the counters) before the reply.
		var cancel context.CancelFunc
		wctx, cancel = l.e.writeCtx(ctx)
		defer cancel()
	}
	n, err := l.e.lock.settle(wctx, adm, l.e.now(), o)
	if err != nil {
		l.e.log.LogAttrs(ctx, slog.LevelError, "lockout write failed: this failure was not counted", slog.Any("err", err))
	}
	if o == Success {
		l.note = n
	}
}

// Finish ends the login with the upstream's Result (NotAsked when none
// was asked), and returns the class of reply the client gets. It records
// the outcome (audit event, log line, OnOutcome), settles the lockout,
// and, unless the login succeeded or step 1 refused it, waits until the
// failure delay has passed since Attempt.Received, so that every failure
// reaches the client after the same time; a cancelled ctx ends the wait
// early. Sleeping blocks only the caller's goroutine.
//
// A Login that is not Allowed finishes as ClassDenied (or ClassTemporary
// when Decide failed, or for Unreachable) whatever r says. A second call
// records nothing and returns ClassDenied at once.
func (l *Login) Finish(ctx context.Context, r Result) Class {
	if l.done.Swap(true) {
		return ClassDenied
	}
	defer l.e.inFlight.Add(-1)
	e := l.e
	v, cause := r.verdict()
	switch {
	case l.plaintext:
		l.settle(ctx, 0)
		e.audit(ctx, l, Failure)
		return ClassNeedTLS
	case l.err != nil || v == unreached:
		l.settle(ctx, 0)
		if l.err == nil {
			l.reason = "temporary failure"
			if cause != nil {
				l.reason += ": " + cause.Error()
			}
		}
		e.audit(ctx, l, Unavailable)
		l.wait(ctx)
		return ClassTemporary
	case !l.allowed:
		l.settle(ctx, 0) // a denied Login settled at Decide what counts
		e.audit(ctx, l, Failure)
		l.wait(ctx)
		return ClassDenied
	}
	switch l.cred {
	case AppPassword:
		// Decide recorded the success; the secret was right whatever
		// the upstream says.
		l.settle(ctx, Success)
		if v == Accepted {
			return ClassOK
		}
		if v == Refused {
			l.reason = "app password accepted, but the upstream refused the login on the user's behalf"
		} else {
			l.reason = "app password accepted, but the listener did not complete the login"
		}
		e.audit(ctx, l, Failure)
		l.wait(ctx)
		return ClassDenied
	}
	if v == Accepted {
		l.settle(ctx, Success)
		switch {
		case l.cred == SecondFactorCredential:
			l.reason = "second factor accepted"
		case l.cred == TokenCredential:
			l.reason = "admin token accepted"
		case l.a.Proto == Web:
			l.reason = "primary password accepted by the portal"
		case l.mfa == store.MFAEnabled:
			l.reason = "primary password accepted; would be refused once enforced"
		default:
			l.reason = "primary password accepted by the upstream"
		}
		e.audit(ctx, l, Success)
		return ClassOK
	}
	switch {
	case v == NotAsked:
		l.settle(ctx, 0)
		l.reason = "allowed, but the listener did not complete the login"
	case l.cred == SecondFactorCredential:
		l.settle(ctx, Failure)
		l.reason = "second factor refused"
	case l.cred == TokenCredential:
		l.settle(ctx, Failure)
		l.reason = "admin token refused"
	default:
		l.settle(ctx, Failure)
		l.reason = "primary password refused by the upstream"
		if l.a.Proto == Web {
			l.reason = "primary password refused by the portal"
		}
		if e.delay > 0 {
			if took := e.now().Sub(l.a.Received); took > e.delay {
				// The reply now comes later than an enforced user's
				// refusal would: the difference tells the two apart.
				e.log.LogAttrs(ctx, slog.LevelWarn, "upstream refused after the failure delay; failures of MFA users and others can be told apart by timing",
					slog.String("proto", string(l.a.Proto)), slog.Duration("took", took), slog.Duration("failure_delay", e.delay),
					slog.String("fix", "set the upstream's own failure delay to 0 (Dovecot: auth_failure_delay = 0) or raise policy.failure_delay"))
			}
		}
	}
	e.audit(ctx, l, Failure)
	l.wait(ctx)
	return ClassDenied
}

// wait sleeps until the failure delay has passed since the credentials
// arrived, or ctx ends.
func (l *Login) wait(ctx context.Context) {
	wait := time.Until(l.a.Received.Add(l.e.delay))
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

// metricCredential is the credential an outcome is counted under: the
// kind of a login that policy allowed, "none" for a deny or a temporary
// failure.
func (l *Login) metricCredential(o Outcome) Credential {
	if o == Unavailable || !l.allowed {
		return NoCredential
	}
	return l.cred
}
