package api

import (
	"net/http"
	"time"

	"github.com/passgate/passgate/policy/account"
)

// userList is GET /users's body.
type userList struct {
	Users []account.UserSummary `json:"users"`
	Next  string                `json:"next,omitempty"` // pass as ?after= for the next page
}

func (s *Server) listUsers(r *http.Request, _ account.Actor) (int, any, error) {
	limit, err := limitParam(r)
	if err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	users, err := s.o.Ops.Users(r.Context(), account.UserQuery{After: q.Get("after"), Search: q.Get("search"), Limit: limit})
	if err != nil {
		return 0, nil, err
	}
	if users == nil {
		users = []account.UserSummary{}
	}
	out := userList{Users: users}
	if len(users) == limit {
		out.Next = users[len(users)-1].Name
	}
	return http.StatusOK, out, nil
}

type newUser struct {
	Name  string           `json:"name"`
	MFA   account.MFAState `json:"mfa,omitempty"`
	Admin bool             `json:"admin,omitempty"`
}

func (s *Server) createUser(r *http.Request, a account.Actor) (int, any, error) {
	var in newUser
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	if in.Name == "" {
		return 0, nil, bad("invalid", "name is required.")
	}
	if _, err := s.o.Ops.AddUser(r.Context(), a, in.Name, in.MFA); err != nil {
		return 0, nil, err
	}
	if in.Admin {
		if err := s.o.Ops.SetAdmin(r.Context(), a, in.Name, true); err != nil {
			return 0, nil, err
		}
	}
	u, err := s.o.Ops.User(r.Context(), in.Name)
	return http.StatusCreated, u, err
}

func (s *Server) getUser(r *http.Request, _ account.Actor) (int, any, error) {
	u, err := s.o.Ops.User(r.Context(), r.PathValue("name"))
	return http.StatusOK, u, err
}

func (s *Server) deleteUser(r *http.Request, a account.Actor) (int, any, error) {
	return http.StatusNoContent, nil, s.o.Ops.DeleteUser(r.Context(), a, r.PathValue("name"))
}

type mfaChange struct {
	MFA account.MFAState `json:"mfa"`
}

type mfaChanged struct {
	Name string           `json:"name"`
	MFA  account.MFAState `json:"mfa"`
	Was  account.MFAState `json:"was"`
}

func (s *Server) setMFA(r *http.Request, a account.Actor) (int, any, error) {
	var in mfaChange
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	switch in.MFA {
	case account.MFADisabled, account.MFAEnabled, account.MFAEnforced:
	default:
		return 0, nil, bad("invalid", "mfa must be disabled, enabled or enforced.")
	}
	u, was, err := s.o.Ops.SetMFA(r.Context(), a, r.PathValue("name"), in.MFA)
	return http.StatusOK, mfaChanged{Name: u.Name, MFA: u.MFA, Was: was}, err
}

type adminChange struct {
	Admin *bool `json:"admin"`
}

func (s *Server) setAdmin(r *http.Request, a account.Actor) (int, any, error) {
	var in adminChange
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	if in.Admin == nil {
		return 0, nil, bad("invalid", "admin (true or false) is required.")
	}
	name := r.PathValue("name")
	if err := s.o.Ops.SetAdmin(r.Context(), a, name, *in.Admin); err != nil {
		return 0, nil, err
	}
	u, err := s.o.Ops.User(r.Context(), name)
	return http.StatusOK, u, err
}

type appPasswordList struct {
	AppPasswords []account.AppPassword `json:"app_passwords"`
}

func (s *Server) listAppPasswords(r *http.Request, _ account.Actor) (int, any, error) {
	aps, err := s.o.Ops.AppPasswords(r.Context(), r.PathValue("name"))
	if aps == nil {
		aps = []account.AppPassword{}
	}
	return http.StatusOK, appPasswordList{AppPasswords: aps}, err
}

type newAppPassword struct {
	Label     string     `json:"label"`
	Scopes    []string   `json:"scopes,omitempty"`
	Networks  []string   `json:"networks,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

type createdAppPassword struct {
	AppPassword account.AppPassword `json:"app_password"`
	Password    string              `json:"password"` // shown this once
}

func (s *Server) createAppPassword(r *http.Request, a account.Actor) (int, any, error) {
	var in newAppPassword
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	if in.Label == "" {
		return 0, nil, bad("invalid", "label is required.")
	}
	ap, secret, err := s.o.Ops.CreateAppPasswordFor(r.Context(), a, r.PathValue("name"), in.Label, in.Scopes, in.Networks, in.ExpiresAt)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, createdAppPassword{AppPassword: ap, Password: account.FormatSecret(secret)}, nil
}

func (s *Server) deleteAppPassword(r *http.Request, a account.Actor) (int, any, error) {
	_, err := s.o.Ops.DeleteAppPasswordFor(r.Context(), a, r.PathValue("name"), r.PathValue("label"))
	return http.StatusNoContent, nil, err
}

type revoked struct {
	Deleted int `json:"deleted"`
}

func (s *Server) revokeAll(r *http.Request, a account.Actor) (int, any, error) {
	n, err := s.o.Ops.RevokeAll(r.Context(), a, r.PathValue("name"))
	return http.StatusOK, revoked{Deleted: n}, err
}

type passkey struct {
	ID         int64      `json:"id"`
	Name       string     `json:"name"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

type methods struct {
	MFA               account.MFAState `json:"mfa"`
	AuthenticatorApp  bool             `json:"authenticator_app"`
	RecoveryCodesLeft int              `json:"recovery_codes_left"`
	Passkeys          []passkey        `json:"passkeys"`
	AppPasswords      int              `json:"app_passwords"`
	AllowAppPasswords bool             `json:"allow_app_passwords"`
	HasSecondFactor   bool             `json:"has_second_factor"`
}

func (s *Server) getMethods(r *http.Request, _ account.Actor) (int, any, error) {
	m, err := s.o.Ops.Methods(r.Context(), r.PathValue("name"))
	if err != nil {
		return 0, nil, err
	}
	out := methods{MFA: m.MFA, AuthenticatorApp: m.TOTP, RecoveryCodesLeft: m.RecoveryLeft, Passkeys: []passkey{},
		AppPasswords: len(m.AppPasswords), AllowAppPasswords: m.AllowAppPassw, HasSecondFactor: m.HasSecondFactor()}
	for _, p := range m.Passkeys {
		out.Passkeys = append(out.Passkeys, passkey{ID: p.ID, Name: p.Name, CreatedAt: p.CreatedAt, LastUsedAt: p.LastUsedAt})
	}
	return http.StatusOK, out, nil
}

func (s *Server) resetMethods(r *http.Request, a account.Actor) (int, any, error) {
	return http.StatusNoContent, nil, s.o.Ops.ResetMethods(r.Context(), a, r.PathValue("name"))
}

type settings struct {
	AllowAppPasswords *bool `json:"allow_app_passwords"`
}

func (s *Server) getSettings(r *http.Request, _ account.Actor) (int, any, error) {
	allow, err := s.o.Ops.AllowAppPasswords(r.Context())
	return http.StatusOK, settings{AllowAppPasswords: &allow}, err
}

func (s *Server) putSettings(r *http.Request, a account.Actor) (int, any, error) {
	var in settings
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	if in.AllowAppPasswords == nil {
		return 0, nil, bad("invalid", "allow_app_passwords (true or false) is required.")
	}
	if _, err := s.o.Ops.SetAllowAppPasswords(r.Context(), a, *in.AllowAppPasswords); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, in, nil
}

type auditList struct {
	Events []account.AuditEvent `json:"events"`
	Next   string               `json:"next,omitempty"` // pass as ?after= for the next page
}

func (s *Server) listAudit(r *http.Request, _ account.Actor) (int, any, error) {
	limit, err := limitParam(r)
	if err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	f := account.AuditFilter{User: q.Get("user"), Protocol: q.Get("protocol"), Outcome: q.Get("outcome"), Newest: true}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return 0, nil, bad("invalid", "%s must be a time in RFC 3339 form, e.g. 2026-12-01T00:00:00Z.", p.name)
			}
			*p.dst = t
		}
	}
	after, err := account.ParseAuditCursor(q.Get("after"))
	if err != nil {
		return 0, nil, bad("invalid", "after must be the next cursor of a previous page.")
	}
	evs, next, err := s.o.Ops.Audit(r.Context(), f, after, limit)
	if err != nil {
		return 0, nil, err
	}
	if evs == nil {
		evs = []account.AuditEvent{}
	}
	out := auditList{Events: evs, Next: next.String()}
	return http.StatusOK, out, nil
}
