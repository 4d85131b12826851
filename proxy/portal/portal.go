// Package portal is the web front of passgate: the Security info portal,
// where users sign in with their primary password and a second factor,
// register an authenticator app or a passkey, and create and delete their
// own app passwords.
//
// Like the protocol fronts it is a listener on the path of a login: a
// sign-in is one more attempt for the same decision, lockout, delay and
// audit, asked of policy through the SignIn interface that cmd wires. The
// pages are rendered on the server with html/template and work without
// JavaScript; a few lines of script (static/portal.js) copy secrets to the
// clipboard and run the WebAuthn ceremonies. The portal never touches SQL:
// account operations go through the Accounts interface (policy/account)
// and sessions through Sessions, both declared here.
//
// This package imports policy/account and no backend.
package portal

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

	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/pquerna/otp"

	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/portal/webpage"
)

//go:embed templates/*.html static/*
var assets embed.FS

// ErrRefused is what SignIn returns for every refused sign-in step,
// whatever the reason (wrong password, unknown or disabled user, lockout,
// plaintext from an untrusted network).
var ErrRefused = errors.New("portal: sign-in refused")

// Attempt is one sign-in step as the portal saw it.
type Attempt struct {
	User       string
	Password   string // the primary password, first step only; never logged
	Client     netip.AddrPort
	TLS        bool   // the request came over TLS
	ClientName string // the browser's User-Agent
	Started    time.Time
	// Local says the request came in plain HTTP from a loopback address
	// to a loopback address (a browser on this machine, or a
	// TLS-terminating proxy here): its credentials never crossed a
	// network, though it is not TLS.
	Local bool
	// Passkey says that a second factor is a passkey's assertion, not a
	// code: it cannot be guessed, and wrong codes do not lock it.
	Passkey bool
}

// LogValue logs the attempt without its password.
func (a Attempt) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", a.User), slog.String("remote_addr", a.Client.String()), slog.Bool("tls", a.TLS))
}

// Account is a user whose primary password was right.
type Account struct {
	User string // the stored name
	MFA  string // disabled | enabled | enforced
}

// SignIn decides portal sign-ins (proto web) with the protocol logins'
// decision: TLS, lockout, audit and failure delay.
type SignIn interface {
	// Password runs the first step: the decision, then the configured
	// verifier. It returns the account, or, after the failure delay,
	// ErrRefused for any refusal and another error when the verifier or
	// the store could not answer.
	Password(ctx context.Context, a Attempt) (Account, error)
	// SecondFactor runs the second step for a user whose password was
	// right: the TLS and lockout steps, then check (the portal's own
	// check of a code or passkey), then it records the outcome. It
	// returns nil when check accepted, else ErrRefused (after the failure
	// delay) or another error.
	SecondFactor(ctx context.Context, a Attempt, check func(ctx context.Context) (bool, error)) error
}

// Accounts is what the portal does to an account (policy/account.Service).
type Accounts interface {
	Methods(ctx context.Context, user string) (account.Methods, error)
	CreateAppPassword(ctx context.Context, a account.Actor, label string, scopes, networks []string, expires *time.Time) (account.AppPassword, string, error)
	DeleteAppPassword(ctx context.Context, a account.Actor, label string) (account.AppPassword, error)
	NewTOTP(user string) (*otp.Key, error)
	ConfirmTOTP(ctx context.Context, a account.Actor, seed, code string) ([]string, error)
	CheckSecondFactor(ctx context.Context, user, code string) (string, error)
	DeleteTOTP(ctx context.Context, a account.Actor) error
	AddPasskey(ctx context.Context, a account.Actor, name string, credID, data []byte) (account.Passkey, error)
	DeletePasskey(ctx context.Context, a account.Actor, id int64) (account.Passkey, error)
	Passkeys(ctx context.Context, user string) ([]account.Passkey, error)
	UsedPasskey(ctx context.Context, user string, credID, data []byte) error
	SignOutEverywhere(ctx context.Context, a account.Actor) (int, error)
	SignedOut(ctx context.Context, a account.Actor)
	Message(err error) (string, bool)
}

// Sessions keeps portal sessions (the store's web_sessions, shared by
// every instance). GetWebSession returns an error matching
// account.ErrNotFound for an unknown id.
type Sessions interface {
	CreateWebSession(ctx context.Context, ws account.Session) error
	GetWebSession(ctx context.Context, idHash []byte) (account.Session, error)
	UpdateWebSession(ctx context.Context, ws account.Session) error
	DeleteWebSession(ctx context.Context, idHash []byte) error
	ListWebSessions(ctx context.Context, user string) ([]account.Session, error)
}

// Defaults of Options.
const (
	DefaultSessionIdle     = 15 * time.Minute
	DefaultSessionAbsolute = 8 * time.Hour
	DefaultReauthAfter     = 5 * time.Minute
	maxSecondFactorTries   = 5 // wrong codes in one session before it ends
)

// Options configures New.
type Options struct {
	// PublicURL is the address users type (web.public_url), e.g.
	// https://passgate.example.test: the WebAuthn relying party is its
	// host, and cross-origin checks accept its origin.
	PublicURL *url.URL
	SignIn    SignIn
	Accounts  Accounts
	Sessions  Sessions
	// RegistrationNetworks, when not empty, are the only networks from
	// which a user who has no second factor yet may register one.
	RegistrationNetworks []netip.Prefix
	SessionIdle          time.Duration // default 15m
	SessionAbsolute      time.Duration // default 8h
	ReauthAfter          time.Duration // default 5m
	Now                  func() time.Time
	Logger               *slog.Logger
}

// Server is the portal's HTTP handler.
type Server struct {
	opts     Options
	log      *slog.Logger
	now      func() time.Time
	pages    webpage.Pages
	webauthn *webauthn.WebAuthn
	handler  http.Handler
}

// New returns the portal. It fails when PublicURL cannot be a WebAuthn
// relying party.
func New(o Options) (*Server, error) {
	if o.PublicURL == nil || o.PublicURL.Host == "" || (o.PublicURL.Scheme != "https" && o.PublicURL.Scheme != "http") {
		return nil, errors.New("portal: the public URL must be an absolute http(s) URL (web.public_url)")
	}
	if o.SignIn == nil || o.Accounts == nil || o.Sessions == nil {
		return nil, errors.New("portal: SignIn, Accounts and Sessions are required")
	}
	if o.SessionIdle <= 0 {
		o.SessionIdle = DefaultSessionIdle
	}
	if o.SessionAbsolute <= 0 {
		o.SessionAbsolute = DefaultSessionAbsolute
	}
	if o.ReauthAfter <= 0 {
		o.ReauthAfter = DefaultReauthAfter
	}
	s := &Server{opts: o, log: o.Logger, now: o.Now}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	origin := o.PublicURL.Scheme + "://" + o.PublicURL.Host
	wa, err := webauthn.New(&webauthn.Config{
		RPID:          o.PublicURL.Hostname(),
		RPDisplayName: "passgate",
		RPOrigins:     []string{origin},
	})
	if err != nil {
		return nil, fmt.Errorf("portal: WebAuthn relying party %q (web.public_url): %w", o.PublicURL.Hostname(), err)
	}
	s.webauthn = wa
	if s.pages, err = webpage.Parse(assets, template.FuncMap{
		"stamp": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
		"join":  strings.Join,
		"upper": strings.ToUpper,
	}); err != nil {
		return nil, fmt.Errorf("portal: %w", err)
	}
	cop := http.NewCrossOriginProtection()
	if err := cop.AddTrustedOrigin(origin); err != nil {
		return nil, fmt.Errorf("portal: trusted origin %q (web.public_url): %w", origin, err)
	}
	s.handler = s.headers(cop.Handler(s.routes()))
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// csp allows no inline script or style and no framing.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"

// headers sets the security headers of every response: the portal's csp,
// those of every face, and its own.
func (s *Server) headers(next http.Handler) http.Handler {
	return webpage.Headers(csp, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cross-Origin-Opener-Policy", "same-origin")
		if r.TLS != nil {
			w.Header().Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	}))
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", s.handleRoot)
	mux.HandleFunc("GET /signin", s.handleSignInPage)
	mux.HandleFunc("POST /signin", s.handleSignIn)
	mux.HandleFunc("GET /signin/verify", s.handleVerifyPage)
	mux.HandleFunc("POST /signin/verify", s.handleVerify)
	mux.HandleFunc("POST /signin/passkey/begin", s.handlePasskeyLoginBegin)
	mux.HandleFunc("POST /signin/passkey/finish", s.handlePasskeyLoginFinish)
	mux.HandleFunc("GET /verify-identity", s.handleReauthPage)
	mux.HandleFunc("POST /verify-identity", s.handleReauth)
	mux.HandleFunc("POST /signout", s.handleSignOut)
	mux.HandleFunc("POST /signout-everywhere", s.handleSignOutEverywhere)
	mux.HandleFunc("GET /security-info", s.handleSecurityInfo)
	mux.HandleFunc("GET /add", s.handleAddPage)
	mux.HandleFunc("POST /add", s.handleAdd)
	mux.HandleFunc("GET /add/authenticator-app", s.handleTOTPPage)
	mux.HandleFunc("POST /add/authenticator-app", s.handleTOTP)
	mux.HandleFunc("GET /add/passkey", s.handlePasskeyPage)
	mux.HandleFunc("POST /add/passkey/begin", s.handlePasskeyRegisterBegin)
	mux.HandleFunc("POST /add/passkey/finish", s.handlePasskeyRegisterFinish)
	mux.HandleFunc("GET /add/app-password", s.handleAppPasswordPage)
	mux.HandleFunc("POST /add/app-password", s.handleAppPassword)
	mux.HandleFunc("GET /delete/{kind}/{id}", s.handleDeletePage)
	mux.HandleFunc("POST /delete/{kind}/{id}", s.handleDelete)
	return mux
}

// page is what every template gets.
type page struct {
	Title   string
	User    string // signed in; empty on the sign-in pages
	Error   string // shown with role="alert"
	Notice  string // shown with role="status"
	Data    any
	Session bool // a full session: show Sign out
}

func (s *Server) render(w http.ResponseWriter, status int, name string, p page) {
	s.pages.Render(w, s.log, "render page", status, name, p)
}

func (s *Server) fault(w http.ResponseWriter, r *http.Request, err error) {
	s.log.LogAttrs(r.Context(), slog.LevelError, "portal request failed", slog.String("reason", "request "+r.URL.Path), slog.Any("err", err))
	s.render(w, http.StatusInternalServerError, "message", page{Title: "Something went wrong",
		Error: "Something went wrong on the server. Try again later."})
}

func clientAddr(r *http.Request) netip.AddrPort {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (s *Server) handleRoot(w http.ResponseWriter, r *http.Request) {
	if ss, ok := s.session(w, r); ok && ss.Stage != stageMFA {
		http.Redirect(w, r, "/security-info", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}
