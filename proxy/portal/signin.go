package portal

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/passgate/passgate/policy/account"
)

// failMessage is the one message of every failed sign-in step, whatever
// the reason.
const failMessage = "We couldn't sign you in. Check what you typed and try again."

// maxField bounds the user name and password read from a form.
const maxField = 1024

type signInData struct {
	User string
}

func (s *Server) handleSignInPage(w http.ResponseWriter, r *http.Request) {
	if ss, ok := s.session(w, r); ok && ss.Stage != stageMFA {
		http.Redirect(w, r, "/security-info", http.StatusSeeOther)
		return
	}
	s.render(w, http.StatusOK, "signin", page{Title: "Sign in"})
}

func (s *Server) attempt(r *http.Request, user, password string) Attempt {
	return Attempt{User: user, Password: password, Client: clientAddr(r), TLS: r.TLS != nil, Local: loopbackHTTP(r), ClientName: r.UserAgent(), Started: s.now()}
}

// loopbackHTTP reports whether the request came over plain HTTP from a
// loopback address to a loopback address (a browser on the same machine,
// or a TLS-terminating proxy there), where its credentials never crossed
// a network. Such a request is still not TLS: it gets no HSTS header, and
// the audit says tls=no.
func loopbackHTTP(r *http.Request) bool {
	if r.TLS != nil {
		return false
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	l, err := netip.ParseAddrPort(local.String())
	return err == nil && l.Addr().Unmap().IsLoopback() && clientAddr(r).Addr().IsLoopback()
}

func (s *Server) handleSignIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	started := s.now()
	user := strings.TrimSpace(r.PostFormValue("username"))
	pw := r.PostFormValue("password")
	if len(user) > maxField || len(pw) > maxField {
		user, pw = "", ""
	}
	a := s.attempt(r, user, pw)
	a.Started = started
	acct, err := s.opts.SignIn.Password(r.Context(), a)
	if err != nil {
		if !errors.Is(err, ErrRefused) {
			s.log.LogAttrs(r.Context(), slog.LevelWarn, "portal sign-in could not be decided", slog.String("user", a.User), slog.String("remote_addr", a.Client.String()), slog.Any("err", err))
		}
		// Every refusal looks the same and sets no cookie.
		s.render(w, http.StatusUnauthorized, "signin", page{Title: "Sign in", Error: failMessage, Data: signInData{User: user}})
		return
	}
	// An old session of this browser ends here: a new id at every sign-in.
	if old, ok := s.session(w, r); ok {
		s.endSession(w, r, old)
	}
	stage, next, err := s.afterPassword(r.Context(), acct.User)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	authAt := s.now()
	if _, err := s.startSession(w, r, nil, acct.User, stage, authAt, sessionData{}); err != nil {
		s.fault(w, r, err)
		return
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// afterPassword decides where a user goes after a right password: the
// second step when a method is registered, else registration.
func (s *Server) afterPassword(ctx context.Context, user string) (stage, next string, err error) {
	m, err := s.opts.Accounts.Methods(ctx, user)
	if err != nil {
		return "", "", err
	}
	if m.HasSecondFactor() {
		return stageMFA, "/signin/verify", nil
	}
	return stageRegister, "/security-info", nil
}

type verifyData struct {
	Passkeys bool
	Reauth   bool
}

func (s *Server) handleVerifyPage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.session(w, r)
	if !ok || ss.Stage != stageMFA {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	s.renderVerify(w, r, ss, http.StatusOK, "")
}

func (s *Server) renderVerify(w http.ResponseWriter, r *http.Request, ss *sess, status int, msg string) {
	pk, err := s.opts.Accounts.Passkeys(r.Context(), ss.User)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	s.render(w, status, "verify", page{Title: "Verify your identity", Error: msg, Data: verifyData{Passkeys: len(pk) > 0, Reauth: ss.data.Reauth}})
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	started := s.now()
	ss, ok := s.session(w, r)
	if !ok || ss.Stage != stageMFA {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	code := r.PostFormValue("code")
	a := s.attempt(r, ss.User, "")
	a.Started = started
	err := s.opts.SignIn.SecondFactor(r.Context(), a, func(ctx context.Context) (bool, error) {
		how, err := s.opts.Accounts.CheckSecondFactor(ctx, ss.User, code)
		return how != "", err
	})
	s.afterSecondFactor(w, r, ss, err)
}

// afterSecondFactor ends the second step: a new session id and the full
// stage on success; the one message on failure, and the end of the
// session after too many.
func (s *Server) afterSecondFactor(w http.ResponseWriter, r *http.Request, ss *sess, err error) {
	if err != nil {
		if !errors.Is(err, ErrRefused) {
			s.log.LogAttrs(r.Context(), slog.LevelWarn, "portal second factor could not be decided", slog.String("user", ss.User), slog.Any("err", err))
		}
		ss.data.Failures++
		if ss.data.Failures >= maxSecondFactorTries {
			s.endSession(w, r, ss)
			s.render(w, http.StatusUnauthorized, "signin", page{Title: "Sign in", Error: failMessage})
			return
		}
		if err := s.save(r.Context(), ss); err != nil {
			s.fault(w, r, err)
			return
		}
		s.renderVerify(w, r, ss, http.StatusUnauthorized, failMessage)
		return
	}
	next := "/security-info"
	if ss.data.Reauth {
		next = safeNext(ss.data.Next)
	}
	if _, err := s.startSession(w, r, ss, ss.User, stageFull, s.now(), sessionData{}); err != nil {
		s.fault(w, r, err)
		return
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// handleReauthPage asks for the password again ("Verify it's you") before
// a change when the sign-in is older than ReauthAfter.
func (s *Server) handleReauthPage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.session(w, r)
	if !ok {
		http.Redirect(w, r, "/signin", http.StatusSeeOther)
		return
	}
	if ss.Stage == stageMFA && ss.data.Reauth {
		http.Redirect(w, r, "/signin/verify", http.StatusSeeOther)
		return
	}
	s.render(w, http.StatusOK, "reauth", page{Title: "Verify your identity", User: ss.User, Session: true})
}

func (s *Server) handleReauth(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	started := s.now()
	ss, ok := s.full(w, r, true)
	if !ok {
		return
	}
	pw := r.PostFormValue("password")
	if len(pw) > maxField {
		pw = ""
	}
	a := s.attempt(r, ss.User, pw)
	a.Started = started
	acct, err := s.opts.SignIn.Password(r.Context(), a)
	if err != nil {
		s.render(w, http.StatusUnauthorized, "reauth", page{Title: "Verify your identity", User: ss.User, Session: true, Error: failMessage})
		return
	}
	m, err := s.opts.Accounts.Methods(r.Context(), acct.User)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	if !m.HasSecondFactor() {
		// Nothing more to ask: a new id, the same stage (a user who is
		// registering stays limited to registering).
		if _, err := s.startSession(w, r, ss, ss.User, ss.Stage, s.now(), sessionData{}); err != nil {
			s.fault(w, r, err)
			return
		}
		http.Redirect(w, r, safeNext(ss.data.Next), http.StatusSeeOther)
		return
	}
	ss.Stage = stageMFA
	ss.data.Reauth = true
	if err := s.save(r.Context(), ss); err != nil {
		s.fault(w, r, err)
		return
	}
	http.Redirect(w, r, "/signin/verify", http.StatusSeeOther)
}

func (s *Server) handleSignOut(w http.ResponseWriter, r *http.Request) {
	if ss, ok := s.session(w, r); ok {
		s.endSession(w, r, ss)
		a := ss.actor()
		a.Addr = clientAddr(r).String()
		s.opts.Accounts.SignedOut(r.Context(), a)
	}
	s.render(w, http.StatusOK, "signin", page{Title: "Sign in", Notice: "You have signed out."})
}

func (s *Server) handleSignOutEverywhere(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.full(w, r, true)
	if !ok {
		return
	}
	a := account.Actor{User: ss.User, Addr: clientAddr(r).String()}
	if _, err := s.opts.Accounts.SignOutEverywhere(r.Context(), a); err != nil {
		s.fault(w, r, err)
		return
	}
	clearCookie(w)
	s.render(w, http.StatusOK, "signin", page{Title: "Sign in", Notice: "You have signed out everywhere."})
}
