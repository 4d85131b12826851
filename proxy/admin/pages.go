package admin

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/passgate/passgate/policy/account"
)

// usersData is the Active users and Multi-factor authentication pages.
type usersData struct {
	Search string
	After  string
	Users  []account.UserSummary
	Total  int
	Next   string // URL of the next page, "" on the last
	First  string // URL of the first page, "" on it
	Action string // the form's action on the MFA page
}

func pageURL(path string, q url.Values) string {
	if e := q.Encode(); e != "" {
		return path + "?" + e
	}
	return path
}

func (s *Server) handleUsers(nav string) func(http.ResponseWriter, *http.Request, account.Actor) {
	return func(w http.ResponseWriter, r *http.Request, a account.Actor) {
		q := r.URL.Query()
		d := usersData{Search: strings.TrimSpace(q.Get("search")), After: q.Get("after")}
		users, err := s.o.Ops.Users(r.Context(), account.UserQuery{After: d.After, Search: d.Search, Limit: PageSize})
		if err == nil {
			d.Total, err = s.o.Ops.CountUsers(r.Context(), d.Search)
		}
		if err != nil {
			s.fault(w, r, err)
			return
		}
		d.Users = users
		path := "/admin/" + nav
		base := url.Values{}
		if d.Search != "" {
			base.Set("search", d.Search)
		}
		if len(users) == PageSize {
			next := url.Values{}
			for k, v := range base {
				next[k] = v
			}
			next.Set("after", users[len(users)-1].Name)
			d.Next = pageURL(path, next)
		}
		if d.After != "" {
			d.First = pageURL(path, base)
		}
		title := "Active users"
		if nav == "mfa" {
			title = "Multi-factor authentication"
			d.Action = pageURL(path, q)
		}
		s.render(w, http.StatusOK, nav, page{Title: title, Nav: nav, Admin: a.User, Notice: q.Get("done"), Data: d})
	}
}

// StateName is an MFA state as the pages show it, in Microsoft's words:
// Disabled, Enabled or Enforced. A state it does not know is shown as it
// is.
func StateName(st account.MFAState) string {
	switch st {
	case account.MFADisabled:
		return "Disabled"
	case account.MFAEnabled:
		return "Enabled"
	case account.MFAEnforced:
		return "Enforced"
	}
	return string(st)
}

// state is the MFA state a button names.
func state(action string) (account.MFAState, bool) {
	switch action {
	case "enable":
		return account.MFAEnabled, true
	case "enforce":
		return account.MFAEnforced, true
	case "disable":
		return account.MFADisabled, true
	}
	return "", false
}

// handleBulkMFA applies Enable, Enforce or Disable to the ticked users.
func (s *Server) handleBulkMFA(w http.ResponseWriter, r *http.Request, a account.Actor) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	st, ok := state(r.PostForm.Get("action"))
	users := r.PostForm["user"]
	back := r.PostForm.Get("back")
	if !strings.HasPrefix(back, "/admin/mfa") {
		back = "/admin/mfa"
	}
	if !ok || len(users) == 0 {
		http.Redirect(w, r, withNotice(back, "Tick at least one user, then choose Enable, Enforce or Disable."), http.StatusSeeOther)
		return
	}
	var failed []string
	for _, u := range users {
		if _, _, err := s.o.Ops.SetMFA(r.Context(), a, u, st); err != nil {
			failed = append(failed, u)
		}
	}
	msg := fmt.Sprintf("Multi-factor authentication is now %s for %s.", StateName(st), strings.Join(users, ", "))
	if len(failed) > 0 {
		msg = fmt.Sprintf("Could not change %s; see the audit trail.", strings.Join(failed, ", "))
	}
	http.Redirect(w, r, withNotice(back, msg), http.StatusSeeOther)
}

func withNotice(path, msg string) string {
	u, err := url.Parse(path)
	if err != nil {
		return path
	}
	q := u.Query()
	q.Set("done", msg)
	u.RawQuery = q.Encode()
	return u.String()
}

type userData struct {
	User         account.UserSummary
	Path         string // the user's page, /admin/users/{name} with the name escaped
	Methods      account.Methods
	AppPasswords []account.AppPassword
}

// lookup finds the user that the URL's {name} names. An unknown user (or
// a name that cannot be one) gets the 404 page, another failure the 500
// page; ok is false then and the answer is written.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request, a account.Actor) (u account.UserSummary, ok bool) {
	name := r.PathValue("name")
	u, err := s.o.Ops.User(r.Context(), name)
	if err != nil {
		if msg, known := s.o.Ops.Message(err); known || strings.Contains(err.Error(), "not found") {
			if !known {
				msg = "There is no user " + name + "."
			}
			s.render(w, http.StatusNotFound, "message", page{Title: "No such user", Nav: "users", Admin: a.User, Error: msg})
			return u, false
		}
		s.fault(w, r, err)
		return u, false
	}
	return u, true
}

func (s *Server) handleUser(w http.ResponseWriter, r *http.Request, a account.Actor) {
	u, ok := s.lookup(w, r, a)
	if !ok {
		return
	}
	d := userData{User: u, Path: s.userBack(u.Name)}
	var err error
	if d.Methods, err = s.o.Ops.Methods(r.Context(), u.Name); err != nil {
		s.fault(w, r, err)
		return
	}
	d.AppPasswords = d.Methods.AppPasswords
	s.render(w, http.StatusOK, "user", page{Title: u.Name, Nav: "mfa", Admin: a.User, Notice: r.URL.Query().Get("done"), Data: d})
}

func (s *Server) userBack(name string) string { return "/admin/users/" + url.PathEscape(name) }

func (s *Server) handleUserMFA(w http.ResponseWriter, r *http.Request, a account.Actor) {
	name := r.PathValue("name")
	st, ok := state(r.FormValue("action"))
	if !ok {
		http.Error(w, "unknown action", http.StatusBadRequest)
		return
	}
	msg := fmt.Sprintf("Multi-factor authentication is now %s for %s.", StateName(st), name)
	if _, _, err := s.o.Ops.SetMFA(r.Context(), a, name, st); err != nil {
		msg, _ = s.o.Ops.Message(err)
	}
	http.Redirect(w, r, withNotice(s.userBack(name), msg), http.StatusSeeOther)
}

// The destructive actions on a user's page, Revoke app passwords and
// Require re-register MFA: the button on the user's page opens a
// confirmation page (GET /admin/users/{name}/{action}) that names what
// will stop working; its Yes posts the action with confirm=yes.
const (
	revokeAll    = "revoke-all"
	resetMethods = "reset-methods"
)

// notConfirmed is the message of a POST of a destructive action that does
// not come from its confirmation page's Yes.
const notConfirmed = "Nothing was changed: to go ahead, press Yes on this page."

// confirmData is a confirmation page: the user, what the user has
// registered, the user's page (Cancel) and the action's URL (Yes).
type confirmData struct {
	User    account.UserSummary
	Methods account.Methods
	Back    string
	Action  string
}

// Enforced reports whether the user's state is Enforced (Require
// re-register MFA moves it back to Enabled).
func (d confirmData) Enforced() bool { return d.User.MFA == account.MFAEnforced }

// confirmTitle is the heading of action's confirmation page for name.
func confirmTitle(action, name string) string {
	if action == revokeAll {
		return "Revoke app passwords of " + name + "?"
	}
	return "Require re-register MFA for " + name + "?"
}

// showConfirm renders action's confirmation page for u with status and
// problem (an alert, "" for none).
func (s *Server) showConfirm(w http.ResponseWriter, r *http.Request, a account.Actor, u account.UserSummary, action string, status int, problem string) {
	m, err := s.o.Ops.Methods(r.Context(), u.Name)
	if err != nil {
		s.fault(w, r, err)
		return
	}
	back := s.userBack(u.Name)
	s.render(w, status, action, page{Title: confirmTitle(action, u.Name), Nav: "mfa", Admin: a.User, Error: problem,
		Data: confirmData{User: u, Methods: m, Back: back, Action: back + "/" + action}})
}

// handleConfirm shows action's confirmation page; it changes nothing.
func (s *Server) handleConfirm(action string) func(http.ResponseWriter, *http.Request, account.Actor) {
	return func(w http.ResponseWriter, r *http.Request, a account.Actor) {
		if u, ok := s.lookup(w, r, a); ok {
			s.showConfirm(w, r, a, u, action, http.StatusOK, "")
		}
	}
}

// confirmed reports whether the POST of action for u is its confirmation
// page's Yes: a form body with confirm=yes, once (a value in the URL does
// not count). Any other POST gets the confirmation page with 400 and a
// message, and changes nothing: a form of a user's page from before the
// confirmation existed (an open tab, a saved page) posts straight to the
// action, and must not act on one click.
func (s *Server) confirmed(w http.ResponseWriter, r *http.Request, a account.Actor, u account.UserSummary, action string) bool {
	if err := r.ParseForm(); err == nil && len(r.PostForm["confirm"]) == 1 && r.PostForm.Get("confirm") == "yes" {
		return true
	}
	s.showConfirm(w, r, a, u, action, http.StatusBadRequest, notConfirmed)
	return false
}

func (s *Server) handleRevokeAll(w http.ResponseWriter, r *http.Request, a account.Actor) {
	u, ok := s.lookup(w, r, a)
	if !ok || !s.confirmed(w, r, a, u, revokeAll) {
		return
	}
	n, err := s.o.Ops.RevokeAll(r.Context(), a, u.Name)
	msg := fmt.Sprintf("Deleted %d app password(s) of %s; the apps that used them are signed out.", n, u.Name)
	if err != nil {
		msg, _ = s.o.Ops.Message(err)
	}
	http.Redirect(w, r, withNotice(s.userBack(u.Name), msg), http.StatusSeeOther)
}

func (s *Server) handleResetMethods(w http.ResponseWriter, r *http.Request, a account.Actor) {
	u, ok := s.lookup(w, r, a)
	if !ok || !s.confirmed(w, r, a, u, resetMethods) {
		return
	}
	msg := fmt.Sprintf("%s must register a sign-in method again at the next sign-in.", u.Name)
	if err := s.o.Ops.ResetMethods(r.Context(), a, u.Name); err != nil {
		msg, _ = s.o.Ops.Message(err)
	}
	http.Redirect(w, r, withNotice(s.userBack(u.Name), msg), http.StatusSeeOther)
}

// The two choices of the global switch on the Settings page, worded as
// Microsoft's.
const (
	allowAppPasswords   = "Allow users to create app passwords to sign in to non-browser apps"
	forbidAppPasswords  = "Do not allow users to create app passwords to sign in to non-browser apps"
	badAppPasswordsForm = "Choose “" + allowAppPasswords + "” or “" + forbidAppPasswords + "”, then Save. Nothing was changed."
)

// ParseAllowAppPasswords reads the Settings form's allow_app_passwords
// field: "true" (Allow users…) or "false" (Do not allow users…), the
// values of its two radio buttons; also "on", which the form's former
// checkbox sent when ticked. Anything else, a missing field or more than
// one value is not a choice: ok is false. (The former checkbox sent
// nothing when unticked; that is refused too rather than read as "do not
// allow", so that no stray request switches app passwords off.)
func ParseAllowAppPasswords(values []string) (allow, ok bool) {
	if len(values) != 1 {
		return false, false
	}
	switch values[0] {
	case "true", "on":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// settingsData is the Settings page: the switch's state and its two
// choices' labels.
type settingsData struct {
	Allow                   bool
	AllowLabel, ForbidLabel string
}

func (s *Server) showSettings(w http.ResponseWriter, r *http.Request, a account.Actor, status int, notice, problem string) {
	allow, err := s.o.Ops.AllowAppPasswords(r.Context())
	if err != nil {
		s.fault(w, r, err)
		return
	}
	s.render(w, status, "settings", page{Title: "Settings", Nav: "settings", Admin: a.User, Notice: notice, Error: problem,
		Data: settingsData{Allow: allow, AllowLabel: allowAppPasswords, ForbidLabel: forbidAppPasswords}})
}

func (s *Server) handleSettings(w http.ResponseWriter, r *http.Request, a account.Actor) {
	s.showSettings(w, r, a, http.StatusOK, r.URL.Query().Get("done"), "")
}

// handleSettingsSave sets the global switch from the form's radio
// buttons; a request that chooses neither gets the page again, with 400
// and a message, and changes nothing.
func (s *Server) handleSettingsSave(w http.ResponseWriter, r *http.Request, a account.Actor) {
	if err := r.ParseForm(); err != nil {
		s.showSettings(w, r, a, http.StatusBadRequest, "", badAppPasswordsForm)
		return
	}
	allow, ok := ParseAllowAppPasswords(r.PostForm["allow_app_passwords"])
	if !ok {
		s.showSettings(w, r, a, http.StatusBadRequest, "", badAppPasswordsForm)
		return
	}
	if _, err := s.o.Ops.SetAllowAppPasswords(r.Context(), a, allow); err != nil {
		s.fault(w, r, err)
		return
	}
	http.Redirect(w, r, withNotice("/admin/settings", "Settings saved."), http.StatusSeeOther)
}

type auditData struct {
	User, Protocol, Outcome, Since, Until string
	Events                                []account.AuditEvent
	Next, First                           string
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request, a account.Actor) {
	q := r.URL.Query()
	d := auditData{User: q.Get("user"), Protocol: q.Get("protocol"), Outcome: q.Get("outcome"), Since: q.Get("since"), Until: q.Get("until")}
	f := account.AuditFilter{User: d.User, Protocol: d.Protocol, Outcome: d.Outcome, Newest: true}
	var problems []string
	for _, p := range []struct {
		v   string
		dst *time.Time
		n   string
	}{{d.Since, &f.Since, "From"}, {d.Until, &f.Until, "To"}} {
		if p.v == "" {
			continue
		}
		t, err := time.Parse("2006-01-02", p.v)
		if err != nil {
			problems = append(problems, p.n+" must be a date like 2026-12-01.")
			continue
		}
		if p.n == "To" {
			t = t.AddDate(0, 0, 1)
		}
		*p.dst = t
	}
	// A cursor that is not one a page gave (edited by hand) starts over.
	after, err := account.ParseAuditCursor(q.Get("after"))
	if err != nil {
		after = account.AuditCursor{}
	}
	evs, next, err := s.o.Ops.Audit(r.Context(), f, after, PageSize)
	if err != nil && errors.Is(err, account.ErrInvalid) {
		// An unknown protocol, outcome or the like: say so, show nothing.
		problems = append(problems, "The filter is not valid: "+err.Error())
		evs, next, err = nil, account.AuditCursor{}, nil
	}
	if err != nil {
		s.fault(w, r, err)
		return
	}
	d.Events = evs
	base := url.Values{}
	for k, v := range map[string]string{"user": d.User, "protocol": d.Protocol, "outcome": d.Outcome, "since": d.Since, "until": d.Until} {
		if v != "" {
			base.Set(k, v)
		}
	}
	if !next.IsZero() {
		nv := url.Values{}
		for k, v := range base {
			nv[k] = v
		}
		nv.Set("after", next.String())
		d.Next = pageURL("/admin/audit", nv)
	}
	if !after.IsZero() {
		d.First = pageURL("/admin/audit", base)
	}
	s.render(w, http.StatusOK, "audit", page{Title: "Audit", Nav: "audit", Admin: a.User, Error: strings.Join(problems, " "), Data: d})
}

type rolloutData struct {
	Days int
	Rows []account.RolloutRow
}

func (s *Server) handleRollout(w http.ResponseWriter, r *http.Request, a account.Actor) {
	days, err := strconv.Atoi(r.URL.Query().Get("days"))
	if err != nil || days < 1 || days > 366 {
		days = 30
	}
	rows, err := s.o.Ops.Rollout(r.Context(), s.o.Now().AddDate(0, 0, -days))
	if err != nil {
		s.fault(w, r, err)
		return
	}
	s.render(w, http.StatusOK, "rollout", page{Title: "Rollout", Nav: "rollout", Admin: a.User, Data: rolloutData{Days: days, Rows: rows}})
}
