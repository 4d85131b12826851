package portal

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/passgate/passgate/policy/account"
)

// cookieName is the session cookie: __Host- makes the browser refuse it
// unless it is Secure, has Path=/ and no Domain.
const cookieName = "__Host-passgate-session"

// Stages of a session.
const (
	stageMFA      = "mfa"      // password right, second factor pending
	stageRegister = "register" // password right, no second factor yet: may only register one
	stageFull     = "full"     // signed in
)

// sessionData is a session's state between requests, sealed at rest by
// the store.
type sessionData struct {
	PendingSeed  string                `json:"pending_seed,omitempty"`  // authenticator app being added
	WebAuthn     *webauthn.SessionData `json:"webauthn,omitempty"`      // ceremony under way
	PasskeyName  string                `json:"passkey_name,omitempty"`  // passkey being added
	Failures     int                   `json:"failures,omitempty"`      // wrong second factors in this session
	Next         string                `json:"next,omitempty"`          // where to go after re-authentication
	Reauth       bool                  `json:"reauth,omitempty"`        // the mfa stage is a re-authentication
	PasswordDone bool                  `json:"password_done,omitempty"` // re-authentication: password right
}

// sess is a loaded session.
type sess struct {
	account.Session
	data sessionData
}

func (ss *sess) actor() account.Actor { return account.Actor{User: ss.User} }

// newID returns a session id of 256 random bits and its hash.
func newID() (id string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, err
	}
	id = base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(id))
	return id, h[:], nil
}

func hashID(id string) []byte {
	h := sha256.Sum256([]byte(id))
	return h[:]
}

// startSession creates a new session (a new id every time: at sign-in and
// at every step up) and sets its cookie; old, when not nil, is deleted.
func (s *Server) startSession(w http.ResponseWriter, r *http.Request, old *sess, user, stage string, authAt time.Time, data sessionData) (*sess, error) {
	id, hash, err := newID()
	if err != nil {
		return nil, err
	}
	now := s.now()
	ws := account.Session{IDHash: hash, User: user, Stage: stage, CreatedAt: now, SeenAt: now, AuthAt: authAt,
		Addr: clientAddr(r).String(), Agent: r.UserAgent()}
	if old != nil {
		// A step up keeps the session's age: the absolute timeout counts
		// from the first sign-in.
		ws.CreatedAt = old.CreatedAt
		if err := s.opts.Sessions.DeleteWebSession(r.Context(), old.IDHash); err != nil {
			return nil, err
		}
	}
	if ws.Data, err = json.Marshal(data); err != nil {
		return nil, err
	}
	if err := s.opts.Sessions.CreateWebSession(r.Context(), ws); err != nil {
		return nil, err
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return &sess{Session: ws, data: data}, nil
}

// session loads the request's session, enforcing the idle and absolute
// timeouts on the server, and marks it seen.
func (s *Server) session(w http.ResponseWriter, r *http.Request) (*sess, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil || len(c.Value) != 43 {
		return nil, false
	}
	ctx := r.Context()
	ws, err := s.opts.Sessions.GetWebSession(ctx, hashID(c.Value))
	if err != nil {
		if !errors.Is(err, account.ErrNotFound) {
			s.log.LogAttrs(ctx, slog.LevelError, "read portal session", slog.Any("err", err))
		}
		clearCookie(w)
		return nil, false
	}
	now := s.now()
	if now.Sub(ws.SeenAt) > s.opts.SessionIdle || now.Sub(ws.CreatedAt) > s.opts.SessionAbsolute {
		_ = s.opts.Sessions.DeleteWebSession(ctx, ws.IDHash)
		clearCookie(w)
		return nil, false
	}
	ss := &sess{Session: ws}
	if len(ws.Data) > 0 {
		if err := json.Unmarshal(ws.Data, &ss.data); err != nil {
			s.log.LogAttrs(ctx, slog.LevelError, "portal session data", slog.Any("err", err))
			return nil, false
		}
	}
	ss.SeenAt = now
	if err := s.save(ctx, ss); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "update portal session", slog.Any("err", err))
		return nil, false
	}
	return ss, true
}

// save writes the session's stage, times and data.
func (s *Server) save(ctx context.Context, ss *sess) error {
	b, err := json.Marshal(ss.data)
	if err != nil {
		return err
	}
	ss.Data = b
	return s.opts.Sessions.UpdateWebSession(ctx, ss.Session)
}

// endSession deletes the session on the server and clears the cookie.
func (s *Server) endSession(w http.ResponseWriter, r *http.Request, ss *sess) {
	if ss != nil {
		if err := s.opts.Sessions.DeleteWebSession(r.Context(), ss.IDHash); err != nil {
			s.log.LogAttrs(r.Context(), slog.LevelError, "delete portal session", slog.Any("err", err))
		}
	}
	clearCookie(w)
}

func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

// full returns the signed-in session, or redirects to the sign-in page.
// A session that must register a method first is accepted where allowReg.
func (s *Server) full(w http.ResponseWriter, r *http.Request, allowReg bool) (*sess, bool) {
	ss, ok := s.session(w, r)
	switch {
	case !ok:
		http.Redirect(w, r, "/signin", http.StatusSeeOther)
		return nil, false
	case ss.Stage == stageFull:
		return ss, true
	case ss.Stage == stageRegister && allowReg:
		return ss, true
	case ss.Stage == stageRegister:
		http.Redirect(w, r, "/security-info", http.StatusSeeOther)
		return nil, false
	case ss.Stage == stageMFA && ss.data.Reauth:
		http.Redirect(w, r, "/verify-identity", http.StatusSeeOther)
		return nil, false
	default:
		http.Redirect(w, r, "/signin/verify", http.StatusSeeOther)
		return nil, false
	}
}

// fresh reports whether the session's sign-in is recent enough to add or
// remove a method or an app password; if not, it sends the user to verify
// their identity first (the password, then the second factor when there
// is one) and back to next afterwards.
func (s *Server) fresh(w http.ResponseWriter, r *http.Request, ss *sess, next string) bool {
	if !s.stale(ss) {
		return true
	}
	ss.data.Next = next
	if err := s.save(r.Context(), ss); err != nil {
		s.fault(w, r, err)
		return false
	}
	http.Redirect(w, r, "/verify-identity", http.StatusSeeOther)
	return false
}

// stale reports whether the session's sign-in is older than ReauthAfter.
func (s *Server) stale(ss *sess) bool { return s.now().Sub(ss.AuthAt) > s.opts.ReauthAfter }

// safeNext returns next if it is one of the portal's own pages or an
// admin center page (escaped as sent, already clean), else the Security
// info page. A delete page must be exactly
// /delete/KIND/NUMBER: the path it came from is the request's as sent,
// in which an escaped slash or dot-dot is not cleaned, and a redirect
// to it would be (to /\evil.example, which a browser takes for
// //evil.example).
func safeNext(next string) string {
	switch next {
	case "/add", "/add/authenticator-app", "/add/passkey", "/add/app-password":
		return next
	}
	// An admin center page (Reverify): escaped as sent, with no dot or
	// empty segment, no backslash, query or fragment.
	if strings.HasPrefix(next, "/admin/") && len(next) <= 512 && !strings.ContainsAny(next, "\\?#") &&
		path.Clean(next) == next {
		return next
	}
	if rest, ok := strings.CutPrefix(next, "/delete/"); ok {
		kind, id, _ := strings.Cut(rest, "/")
		switch kind {
		case "app-password", "authenticator-app", "passkey":
			if len(id) > 0 && len(id) <= 19 && strings.Trim(id, "0123456789") == "" {
				return next
			}
		}
	}
	return "/security-info"
}
