// Package api is passgate's admin JSON API under /api/v1: users, their
// app passwords and methods, the settings and the audit trail, for
// automation (onboarding scripts, an HR system) and help desks. Every
// operation is one of policy/account's, so the API follows the same
// rules and writes the same audit events as the command line and the
// admin pages. The OpenAPI 3.1 document openapi.json describes it and is
// served at /api/v1/openapi.json.
//
// Requests are authenticated by admin tokens ("Authorization: Bearer
// TOKEN", see "passgate admin-token create"), checked through the
// login decision so that failures count in the lockout; every failure
// gets the same answer. A signed-in admin of the portal may also call it
// from the browser.
package api

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/passgate/passgate/policy/account"
)

// OpenAPI is the OpenAPI 3.1 document of the API.
//
//go:embed openapi.json
var OpenAPI []byte

// MaxBody is the largest request body accepted; a larger one is 413.
const MaxBody = 1 << 20

// Ops are the account operations the API performs (*account.Admin).
type Ops interface {
	Users(ctx context.Context, q account.UserQuery) ([]account.UserSummary, error)
	User(ctx context.Context, name string) (account.UserSummary, error)
	AddUser(ctx context.Context, a account.Actor, name string, mfa account.MFAState) (account.User, error)
	DeleteUser(ctx context.Context, a account.Actor, name string) error
	SetMFA(ctx context.Context, a account.Actor, name string, st account.MFAState) (account.User, account.MFAState, error)
	SetAdmin(ctx context.Context, a account.Actor, name string, admin bool) error
	IsAdmin(ctx context.Context, name string) (bool, error)
	AppPasswords(ctx context.Context, user string) ([]account.AppPassword, error)
	CreateAppPasswordFor(ctx context.Context, a account.Actor, user, label string, scopes, networks []string, expires *time.Time) (account.AppPassword, string, error)
	DeleteAppPasswordFor(ctx context.Context, a account.Actor, user, label string) (account.AppPassword, error)
	RevokeAll(ctx context.Context, a account.Actor, user string) (int, error)
	Methods(ctx context.Context, user string) (account.Methods, error)
	ResetMethods(ctx context.Context, a account.Actor, user string) error
	AllowAppPasswords(ctx context.Context) (bool, error)
	SetAllowAppPasswords(ctx context.Context, a account.Actor, allow bool) (bool, error)
	Audit(ctx context.Context, f account.AuditFilter, after account.AuditCursor, limit int) ([]account.AuditEvent, account.AuditCursor, error)
	Message(err error) (string, bool)
}

// Tokens checks an admin token presented from client, counting failures
// in the lockout: it returns the token or an error, the same for every
// kind of failure (unknown, expired, revoked, locked out).
type Tokens interface {
	CheckToken(ctx context.Context, token string, client netip.AddrPort, tls bool) (account.AdminToken, error)
}

// Sessions tells the signed-in user of the portal, if any.
//
// Recent reports whether the session signed in or verified its identity
// recently enough for a change (the portal's ReauthAfter).
type Sessions interface {
	SignedIn(w http.ResponseWriter, r *http.Request) (user string, ok bool)
	Recent(w http.ResponseWriter, r *http.Request) bool
}

// AdminCheck reports whether a signed-in user may administer: the admin
// flag and a registered second factor.
type AdminCheck func(ctx context.Context, user string) (bool, error)

// Options configures New.
type Options struct {
	Ops      Ops
	Tokens   Tokens
	Sessions Sessions   // optional: lets a signed-in admin call the API
	IsAdmin  AdminCheck // required with Sessions
	Now      func() time.Time
	Logger   *slog.Logger
}

// Server is the API's HTTP handler, to mount at /api/v1/.
type Server struct {
	o   Options
	log *slog.Logger
	mux *http.ServeMux
}

// New returns the API.
func New(o Options) (*Server, error) {
	if o.Ops == nil || o.Tokens == nil {
		return nil, errors.New("api: Ops and Tokens are required")
	}
	if o.Sessions != nil && o.IsAdmin == nil {
		return nil, errors.New("api: IsAdmin is required with Sessions")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{o: o, log: o.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(OpenAPI)
	})
	m.Handle("GET /api/v1/users", s.read(s.listUsers))
	m.Handle("POST /api/v1/users", s.write(s.createUser))
	m.Handle("GET /api/v1/users/{name}", s.read(s.getUser))
	m.Handle("DELETE /api/v1/users/{name}", s.write(s.deleteUser))
	m.Handle("PUT /api/v1/users/{name}/mfa", s.write(s.setMFA))
	m.Handle("PUT /api/v1/users/{name}/admin", s.write(s.setAdmin))
	m.Handle("GET /api/v1/users/{name}/app-passwords", s.read(s.listAppPasswords))
	m.Handle("POST /api/v1/users/{name}/app-passwords", s.write(s.createAppPassword))
	m.Handle("DELETE /api/v1/users/{name}/app-passwords", s.write(s.revokeAll))
	m.Handle("DELETE /api/v1/users/{name}/app-passwords/{label}", s.write(s.deleteAppPassword))
	m.Handle("GET /api/v1/users/{name}/methods", s.read(s.getMethods))
	m.Handle("DELETE /api/v1/users/{name}/methods", s.write(s.resetMethods))
	m.Handle("GET /api/v1/settings", s.read(s.getSettings))
	m.Handle("PUT /api/v1/settings", s.write(s.putSettings))
	m.Handle("GET /api/v1/audit", s.read(s.listAudit))
	m.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.authenticate(w, r, false); !ok {
			return
		}
		if allow := s.allowed(r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "This method is not allowed on this path: see /api/v1/openapi.json.")
			return
		}
		writeError(w, http.StatusNotFound, "not_found", "No such API path: see /api/v1/openapi.json.")
	})
	s.mux = m
}

// allowed returns the methods the path has, for a 405.
func (s *Server) allowed(r *http.Request) []string {
	var out []string
	for _, m := range []string{"GET", "POST", "PUT", "DELETE"} {
		c := r.Clone(r.Context())
		c.Method = m
		if _, pattern := s.mux.Handler(c); pattern != "" && pattern != "/api/v1/" {
			out = append(out, m)
		}
	}
	return out
}

// ServeHTTP implements http.Handler. Every answer is JSON, which a
// browser opened on it must neither cache (it may carry a new app
// password), run, frame nor name in a Referer.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	s.mux.ServeHTTP(w, r)
}

// Error is the body of every error response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, Error{Code: code, Message: msg})
}

// handler is an API handler: it returns the status and body, or an error.
type handler func(r *http.Request, a account.Actor) (int, any, error)

func (s *Server) read(h handler) http.Handler  { return s.wrap(h, false) }
func (s *Server) write(h handler) http.Handler { return s.wrap(h, true) }

func (s *Server) wrap(h handler, writes bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := s.authenticate(w, r, writes)
		if !ok {
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		}
		status, body, err := h(r, a)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if body == nil {
			w.WriteHeader(status)
			return
		}
		writeJSON(w, status, body)
	})
}

// authenticate returns the actor of the request, or answers 401 (one
// answer for every token failure), 403 (a non-admin's session, a
// read-only token writing).
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, writes bool) (account.Actor, bool) {
	client, _ := netip.ParseAddrPort(r.RemoteAddr)
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	authz := r.Header.Get("Authorization")
	if authz == "" && s.o.Sessions != nil {
		if user, ok := s.o.Sessions.SignedIn(w, r); ok {
			admin, err := s.o.IsAdmin(r.Context(), user)
			if err != nil {
				s.fail(w, r, err)
				return account.Actor{}, false
			}
			if !admin {
				writeError(w, http.StatusForbidden, "forbidden", "Only administrators with a second factor registered may use the admin API.")
				return account.Actor{}, false
			}
			if writes && !s.o.Sessions.Recent(w, r) {
				writeError(w, http.StatusForbidden, "reauthentication_required",
					"A change made with the portal's sign-in needs a recent one: verify your identity on the Security info page (or sign in again), then retry; or use an admin token.")
				return account.Actor{}, false
			}
			return account.Actor{Kind: "admin", User: user, Addr: client.String()}, true
		}
	}
	token, found := strings.CutPrefix(authz, "Bearer ")
	if !found || token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="passgate"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "Send a valid admin token: Authorization: Bearer TOKEN (see passgate admin-token create).")
		return account.Actor{}, false
	}
	t, err := s.o.Tokens.CheckToken(r.Context(), strings.TrimSpace(token), client, r.TLS != nil)
	if err != nil {
		if r.Context().Err() == nil && !errors.Is(err, ErrRefused) {
			s.fail(w, r, err)
			return account.Actor{}, false
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="passgate", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "Send a valid admin token: Authorization: Bearer TOKEN (see passgate admin-token create).")
		return account.Actor{}, false
	}
	if writes && t.ReadOnly {
		writeError(w, http.StatusForbidden, "read_only", "This admin token is read-only: it cannot change anything.")
		return account.Actor{}, false
	}
	return account.Actor{Kind: "api", User: t.Name, Addr: client.String()}, true
}

// ErrRefused is what Tokens returns for every refused token.
var ErrRefused = errors.New("api: admin token refused")

// problem is an error the client caused, with its status and code.
type problem struct {
	status int
	code   string
	msg    string
}

func (p *problem) Error() string { return p.msg }

func bad(code, format string, args ...any) error {
	return &problem{status: http.StatusBadRequest, code: code, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var p *problem
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &p):
		writeError(w, p.status, p.code, p.msg)
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("The request body is larger than %d bytes.", MaxBody))
	case errors.Is(err, account.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", message(s.o.Ops, err))
	case errors.Is(err, account.ErrExists):
		writeError(w, http.StatusConflict, "exists", message(s.o.Ops, err))
	case errors.Is(err, account.ErrInvalid):
		writeError(w, http.StatusBadRequest, "invalid", message(s.o.Ops, err))
	default:
		msg, ok := s.o.Ops.Message(err)
		if ok {
			writeError(w, http.StatusConflict, conflictCode(err), msg)
			return
		}
		s.log.LogAttrs(r.Context(), slog.LevelError, "API request failed", slog.String("reason", r.Method+" "+r.URL.Path), slog.Any("err", err))
		writeError(w, http.StatusInternalServerError, "internal", "Something went wrong on the server; try again later, and see passgate's log.")
	}
}

func message(ops Ops, err error) string {
	if msg, ok := ops.Message(err); ok && !strings.HasPrefix(msg, "Something went wrong") {
		return msg
	}
	m := strings.TrimPrefix(err.Error(), "store: ")
	return strings.ToUpper(m[:1]) + m[1:] + "."
}

// conflictCode names the rules the account operations enforce.
func conflictCode(err error) string {
	switch {
	case errors.Is(err, account.ErrLimitReached):
		return "limit_reached"
	case errors.Is(err, account.ErrAppPasswordsDisabled):
		return "app_passwords_disabled"
	case errors.Is(err, account.ErrMFADisabled):
		return "mfa_disabled"
	case errors.Is(err, account.ErrLabelTaken):
		return "exists"
	}
	return "conflict"
}

// decode reads the JSON body into v: malformed JSON, unknown fields,
// trailing data and a body over MaxBody are refused.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &problem{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type", msg: "Send the body as application/json."}
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return err
	case errors.Is(err, io.EOF):
		return bad("malformed_json", "The request body is empty: send a JSON object.")
	case err != nil && strings.HasPrefix(err.Error(), "json: unknown field"):
		return bad("unknown_field", "The request body has an unknown field: %s.", strings.TrimPrefix(err.Error(), "json: unknown field "))
	case err != nil:
		return bad("malformed_json", "The request body is not valid JSON for this request: %v.", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if errors.As(err, &tooBig) {
			return err
		}
		return bad("malformed_json", "The request body has data after the JSON object.")
	}
	return nil
}

// limitParam reads the limit query parameter (1-1000, default 50).
func limitParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 50, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		return 0, bad("invalid", "limit must be a whole number from 1 to 1000.")
	}
	return n, nil
}
