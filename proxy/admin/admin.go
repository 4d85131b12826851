// Package admin is passgate's admin center: server-rendered pages under
// /admin for the users marked admin (passgate user set-admin) who have a
// second factor registered, signed in through the Security info portal.
// Active users, Multi-factor authentication (Enable, Enforce, Disable for
// one or ticked users; Revoke app passwords and Require re-register MFA,
// each behind a confirmation page that names what will stop working),
// Settings, Audit and Rollout. Every change is one of policy/account's
// operations, audited with the admin as actor. The pages' visible words
// and accessible names are exactly those that portal.md requires
// (Microsoft's), so that help texts and scripts written for Microsoft's
// pages find every control.
package admin

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/portal/webpage"
)

//go:embed templates/*.html static/*
var assets embed.FS

// PageSize is the number of users on a page.
const PageSize = 50

// Ops are the account operations the pages perform (*account.Admin).
type Ops interface {
	Users(ctx context.Context, q account.UserQuery) ([]account.UserSummary, error)
	CountUsers(ctx context.Context, search string) (int, error)
	User(ctx context.Context, name string) (account.UserSummary, error)
	SetMFA(ctx context.Context, a account.Actor, name string, st account.MFAState) (account.User, account.MFAState, error)
	AppPasswords(ctx context.Context, user string) ([]account.AppPassword, error)
	RevokeAll(ctx context.Context, a account.Actor, user string) (int, error)
	Methods(ctx context.Context, user string) (account.Methods, error)
	ResetMethods(ctx context.Context, a account.Actor, user string) error
	AllowAppPasswords(ctx context.Context) (bool, error)
	SetAllowAppPasswords(ctx context.Context, a account.Actor, allow bool) (bool, error)
	Audit(ctx context.Context, f account.AuditFilter, after account.AuditCursor, limit int) ([]account.AuditEvent, account.AuditCursor, error)
	Rollout(ctx context.Context, since time.Time) ([]account.RolloutRow, error)
	IsAdmin(ctx context.Context, name string) (bool, error)
	Message(err error) (string, bool)
}

// Sessions tells the signed-in user of the portal (*portal.Server).
// Reverify reports whether the session signed in or verified its
// identity recently enough for a change; when not, it has sent the
// browser to verify it and come back to next.
type Sessions interface {
	SignedIn(w http.ResponseWriter, r *http.Request) (user string, ok bool)
	Reverify(w http.ResponseWriter, r *http.Request, next string) bool
}

// Options configures New.
type Options struct {
	Ops       Ops
	Sessions  Sessions
	PublicURL *url.URL // its origin is trusted for forms
	Now       func() time.Time
	Logger    *slog.Logger
}

// Server is the admin pages' HTTP handler, to mount at /admin and
// /admin/.
type Server struct {
	o       Options
	log     *slog.Logger
	pages   webpage.Pages
	handler http.Handler
}

// New returns the admin pages.
func New(o Options) (*Server, error) {
	if o.Ops == nil || o.Sessions == nil || o.PublicURL == nil {
		return nil, errors.New("admin: Ops, Sessions and PublicURL are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{o: o, log: o.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if s.pages, err = webpage.Parse(assets, template.FuncMap{
		"stamp": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
		"join":  strings.Join,
		"state": StateName,
	}); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	cop := http.NewCrossOriginProtection()
	if err := cop.AddTrustedOrigin(o.PublicURL.Scheme + "://" + o.PublicURL.Host); err != nil {
		return nil, err
	}
	s.handler = webpage.Headers(csp, cop.Handler(s.routes()))
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// csp allows no script at all, and no framing.
const csp = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /admin/static/", http.StripPrefix("/admin/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /admin", s.guard(func(w http.ResponseWriter, r *http.Request, _ account.Actor) {
		http.Redirect(w, r, "/admin/users", http.StatusSeeOther)
	}))
	mux.HandleFunc("GET /admin/{$}", s.guard(func(w http.ResponseWriter, r *http.Request, _ account.Actor) {
		http.Redirect(w, r, "/admin/users", http.StatusSeeOther)
	}))
	mux.HandleFunc("GET /admin/users", s.guard(s.handleUsers("users")))
	mux.HandleFunc("GET /admin/mfa", s.guard(s.handleUsers("mfa")))
	mux.HandleFunc("POST /admin/mfa", s.guard(s.handleBulkMFA))
	mux.HandleFunc("GET /admin/users/{name}", s.guard(s.handleUser))
	mux.HandleFunc("POST /admin/users/{name}/mfa", s.guard(s.handleUserMFA))
	mux.HandleFunc("GET /admin/users/{name}/revoke-all", s.guard(s.handleConfirm(revokeAll)))
	mux.HandleFunc("POST /admin/users/{name}/revoke-all", s.guard(s.handleRevokeAll))
	mux.HandleFunc("GET /admin/users/{name}/reset-methods", s.guard(s.handleConfirm(resetMethods)))
	mux.HandleFunc("POST /admin/users/{name}/reset-methods", s.guard(s.handleResetMethods))
	mux.HandleFunc("GET /admin/settings", s.guard(s.handleSettings))
	mux.HandleFunc("POST /admin/settings", s.guard(s.handleSettingsSave))
	mux.HandleFunc("GET /admin/audit", s.guard(s.handleAudit))
	mux.HandleFunc("GET /admin/rollout", s.guard(s.handleRollout))
	mux.HandleFunc("/admin/", s.guard(func(w http.ResponseWriter, r *http.Request, _ account.Actor) {
		s.render(w, http.StatusNotFound, "message", page{Title: "Not found", Error: "There is no such admin page."})
	}))
	return mux
}

// page is what every template gets.
type page struct {
	Title  string
	Nav    string // the current section
	Admin  string // the signed-in admin
	Error  string
	Notice string
	Data   any
}

func (s *Server) render(w http.ResponseWriter, status int, name string, p page) {
	s.pages.Render(w, s.log, "render admin page", status, name, p)
}

func (s *Server) fault(w http.ResponseWriter, r *http.Request, err error) {
	s.log.LogAttrs(r.Context(), slog.LevelError, "admin request failed", slog.String("reason", r.Method+" "+r.URL.Path), slog.Any("err", err))
	s.render(w, http.StatusInternalServerError, "message", page{Title: "Something went wrong", Error: "Something went wrong on the server. Try again later."})
}

// guard lets only a signed-in admin with a second factor through: others
// are sent to sign in, or get 403. A change (any method but GET and
// HEAD) also needs a sign-in or "Verify it's you" of the last few
// minutes (the portal's ReauthAfter), as a change of the user's own on
// the portal does: an admin session left open cannot be used to change
// others' accounts without the admin's password and second factor.
// After verifying, the admin comes back to the page the form was on.
func (s *Server) guard(h func(http.ResponseWriter, *http.Request, account.Actor)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, ok := s.o.Sessions.SignedIn(w, r)
		if !ok {
			http.Redirect(w, r, "/signin", http.StatusSeeOther)
			return
		}
		ok, err := IsAdmin(r.Context(), s.o.Ops, user)
		if err != nil {
			s.fault(w, r, err)
			return
		}
		if !ok {
			s.render(w, http.StatusForbidden, "message", page{Title: "Administrators only",
				Error: "These pages are for administrators. Ask an administrator if you need access; an administrator also needs a second sign-in method registered on the Security info page."})
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !s.o.Sessions.Reverify(w, r, formPage(r)) {
			return
		}
		addr := ""
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
		}
		h(w, r, account.Actor{Kind: "admin", User: user, Addr: addr})
	}
}

// formPage is the page whose form sent r: the same path (the bulk MFA
// page, settings, the confirmation pages), or the user's page for a
// user's MFA state. It keeps the path's escaping as sent.
func formPage(r *http.Request) string {
	p := r.URL.EscapedPath()
	if rest, ok := strings.CutPrefix(p, "/admin/users/"); ok && strings.Count(rest, "/") == 1 {
		return strings.TrimSuffix(p, "/mfa")
	}
	return p
}

// AdminChecker is what IsAdmin needs.
type AdminChecker interface {
	IsAdmin(ctx context.Context, name string) (bool, error)
	Methods(ctx context.Context, user string) (account.Methods, error)
}

// IsAdmin reports whether user may administer: marked admin and with a
// second factor (authenticator app or passkey) registered. The API uses
// it for signed-in users too.
func IsAdmin(ctx context.Context, ops AdminChecker, user string) (bool, error) {
	ok, err := ops.IsAdmin(ctx, user)
	if err != nil || !ok {
		return false, err
	}
	m, err := ops.Methods(ctx, user)
	if err != nil {
		return false, err
	}
	return m.HasSecondFactor(), nil
}
