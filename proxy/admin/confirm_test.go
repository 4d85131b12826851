package admin_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// methods is what the two destructive actions may change of a user, as
// the store holds it, and how many of the user's audit events record
// either action. It is comparable, so that a test sees any change.
type methods struct {
	MFA          store.MFAState
	AppPasswords string // labels, oldest first
	TOTP         bool
	RecoveryLeft int
	Passkeys     string // names, oldest first
	Sessions     int
	Audited      int // app-password.revoke-all and mfa.reset events
}

func (e *env) methods(user string) methods {
	e.t.Helper()
	ctx := context.Background()
	var m methods
	var err error
	if m.MFA, err = e.st.UserMFA(ctx, user); err != nil {
		e.t.Fatal(err)
	}
	aps, err := e.st.ListAppPasswords(ctx, user)
	if err != nil {
		e.t.Fatal(err)
	}
	var labels []string
	for _, ap := range aps {
		labels = append(labels, ap.Label)
	}
	m.AppPasswords = strings.Join(labels, ", ")
	_, _, _, err = e.st.TOTP(ctx, user)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		e.t.Fatal(err)
	}
	m.TOTP = err == nil
	if m.RecoveryLeft, err = e.st.RecoveryCodesLeft(ctx, user); err != nil {
		e.t.Fatal(err)
	}
	pks, err := e.st.ListWebAuthn(ctx, user)
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, p := range pks {
		names = append(names, p.Name)
	}
	m.Passkeys = strings.Join(names, ", ")
	ss, err := e.st.ListWebSessions(ctx, user)
	if err != nil {
		e.t.Fatal(err)
	}
	m.Sessions = len(ss)
	evs, err := e.st.Audit(ctx, store.AuditFilter{User: user})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Action == "app-password.revoke-all" || ev.Action == "mfa.reset" {
			m.Audited++
		}
	}
	return m
}

// addFullUser adds name, enforced, with everything the two actions
// delete: the app passwords Outlook 2010 and Office scanner, an
// authenticator app with ten recovery codes, the passkey YubiKey 5 and a
// portal session.
func (e *env) addFullUser(name string) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.st.AddUser(ctx, name, store.MFAEnforced); err != nil {
		e.t.Fatal(err)
	}
	for _, label := range []string{"Outlook 2010", "Office scanner"} {
		if _, _, err := e.st.CreateAppPassword(ctx, store.NewAppPassword{User: name, Label: label}); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := e.st.SetTOTP(ctx, name, "JBSWY3DPEHPK3PXP"); err != nil {
		e.t.Fatal(err)
	}
	codes := make([]string, 10)
	for i := range codes {
		codes[i] = fmt.Sprintf("code%04d", i)
	}
	if err := e.st.SetRecoveryCodes(ctx, name, codes); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.st.AddWebAuthn(ctx, store.WebAuthnCredential{User: name, Name: "YubiKey 5", CredentialID: []byte(name), Data: []byte(`{}`)}); err != nil {
		e.t.Fatal(err)
	}
	id := sha256.Sum256([]byte("session of " + name))
	now := time.Now()
	if err := e.st.CreateWebSession(ctx, store.WebSession{IDHash: id[:], User: name, Stage: "full", CreatedAt: now, SeenAt: now, AuthAt: now}); err != nil {
		e.t.Fatal(err)
	}
}

// TestUserPageButtons: on a user's page, Revoke app passwords and Require
// re-register MFA (their words and hints as before) open their
// confirmation pages, with the user's name escaped in the URL; they do
// not post.
func TestUserPageButtons(t *testing.T) {
	e := newEnv(t)
	e.addAdmin("alice")
	for _, tc := range []struct{ name, path string }{
		{"carol", "/admin/users/carol"},
		{"o'hara?x#1/2", "/admin/users/o%27hara%3Fx%231%2F2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.addFullUser(tc.name)
			checkPage(t, e.mustGet(tc.path), []string{
				`<form method="get" action="` + tc.path + `/reset-methods">
<button type="submit" class="secondary" aria-describedby="reset-hint">Require re-register MFA</button>`,
				`<form method="get" action="` + tc.path + `/revoke-all">
<button type="submit" class="danger" aria-describedby="revoke-hint">Revoke app passwords</button>`,
				`<form method="post" action="` + tc.path + `/mfa" class="buttons">`,
				`id="reset-hint">Deletes the authenticator app, recovery codes, passkeys and portal sessions of`,
				`id="revoke-hint">Deletes every app password of`,
			}, []string{ // no form posts straight to the action
				`method="post" action="` + tc.path + `/reset-methods"`,
				`method="post" action="` + tc.path + `/revoke-all"`,
			})
		})
	}
}

// TestConfirmPages: each confirmation page names the action and the user
// in its heading, lists what will stop working (the app passwords by name;
// the authenticator app, recovery codes, passkeys by name and portal
// sessions), says that it cannot be undone, and has Yes (a form posting
// the action with confirm=yes) and Cancel (back to the user's page).
// Showing it changes nothing.
func TestConfirmPages(t *testing.T) {
	e := newEnv(t)
	e.addAdmin("alice")
	e.addFullUser("carol")
	e.addFullUser("o'hara?x#1/2")
	if _, err := e.st.AddUser(context.Background(), "dave", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	const warn = `<p class="warn">This cannot be undone.</p>`
	yesCancel := func(path, action string) []string {
		return []string{
			`<form method="post" action="` + path + `/` + action + `"><input type="hidden" name="confirm" value="yes"><button type="submit" class="danger">Yes</button></form>`,
			`<form method="get" action="` + path + `"><button type="submit" class="secondary">Cancel</button></form>`,
		}
	}
	for _, tc := range []struct {
		name, user, path, action string
		want, notWant            []string
	}{
		{"revoke/carol", "carol", "/admin/users/carol", "revoke-all", []string{
			`<title>Revoke app passwords of carol? – passgate admin center</title>`,
			`<h1>Revoke app passwords of carol?</h1>`,
			`<p id="stops">These app passwords of carol will stop working:</p>`,
			`<ul class="stops" aria-labelledby="stops">
<li>Outlook 2010</li>
<li>Office scanner</li>
</ul>`,
			`is signed out at once`,
			warn,
		}, []string{"has no app passwords", `role="alert"`}},
		{"revoke/none", "dave", "/admin/users/dave", "revoke-all", []string{
			`<h1>Revoke app passwords of dave?</h1>`,
			`<p>dave has no app passwords: nothing will stop working.</p>`,
			warn,
		}, []string{`class="stops"`, "signed out at once"}},
		{"revoke/escaped-name", "o'hara?x#1/2", "/admin/users/o%27hara%3Fx%231%2F2", "revoke-all", []string{
			`<h1>Revoke app passwords of o&#39;hara?x#1/2?</h1>`,
			`<li>Outlook 2010</li>`,
		}, nil},
		{"reset/carol", "carol", "/admin/users/carol", "reset-methods", []string{
			`<title>Require re-register MFA for carol? – passgate admin center</title>`,
			`<h1>Require re-register MFA for carol?</h1>`,
			`<p id="stops">These sign-in methods of carol will stop working and are deleted:</p>`,
			`<li>Authenticator app (registered <time datetime=`,
			`and its recovery codes (10 left)</li>`,
			`<li>Passkey YubiKey 5</li>`,
			`<li>Portal sessions: every browser signed in as carol is signed out</li>`,
			`carol must register a sign-in method again at the next sign-in.`,
			`Multi-factor auth status goes from Enforced back to Enabled`,
			`<p>App passwords are not affected.</p>`,
			warn,
		}, []string{"none registered", "stays", `role="alert"`}},
		{"reset/none", "dave", "/admin/users/dave", "reset-methods", []string{
			`<h1>Require re-register MFA for dave?</h1>`,
			`<li>Authenticator app and recovery codes: none registered</li>`,
			`<li>Passkeys: none registered</li>`,
			`<li>Portal sessions: every browser signed in as dave is signed out</li>`,
			`Multi-factor auth status stays Enabled.`,
			warn,
		}, []string{"Passkey YubiKey", "goes from Enforced"}},
		{"reset/escaped-name", "o'hara?x#1/2", "/admin/users/o%27hara%3Fx%231%2F2", "reset-methods", []string{
			`<h1>Require re-register MFA for o&#39;hara?x#1/2?</h1>`,
			`<li>Passkey YubiKey 5</li>`,
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.methods(tc.user)
			checkPage(t, e.mustGet(tc.path+"/"+tc.action), append(tc.want, yesCancel(tc.path, tc.action)...), tc.notWant)
			if after := e.methods(tc.user); after != before {
				t.Errorf("showing the page changed %s:\nbefore %+v\nafter  %+v", tc.user, before, after)
			}
		})
	}
}

// TestConfirmActions: only the confirmation page's Yes acts: a POST whose
// form says confirm=yes (once) revokes the app passwords, or deletes the
// second factors and portal sessions and moves Enforced back to Enabled,
// and is audited; any other POST gets the confirmation page again with 400
// and a message, and a POST from another origin 403; neither changes
// anything, nor writes an audit event.
func TestConfirmActions(t *testing.T) {
	const notConfirmed = `<div class="alert" role="alert">Nothing was changed: to go ahead, press Yes on this page.</div>`
	actions := []struct {
		action  string
		heading string
		done    string // the notice on the user's page
		change  func(methods) methods
	}{
		{"revoke-all", "<h1>Revoke app passwords of carol?</h1>",
			"Deleted 2 app password(s) of carol; the apps that used them are signed out.",
			func(m methods) methods { m.AppPasswords = ""; m.Audited++; return m }},
		{"reset-methods", "<h1>Require re-register MFA for carol?</h1>",
			"carol must register a sign-in method again at the next sign-in.",
			func(m methods) methods {
				m.MFA, m.TOTP, m.RecoveryLeft, m.Passkeys, m.Sessions = store.MFAEnabled, false, 0, "", 0
				m.Audited++
				return m
			}},
	}
	for _, tc := range []struct {
		name    string
		query   string // in the URL
		body    string // the form
		headers map[string]string
		status  int
	}{
		{"ok/yes", "", "confirm=yes", nil, http.StatusSeeOther},
		{"ok/same-origin", "", "confirm=yes", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, http.StatusSeeOther},
		{"fail/no-confirm", "", "", nil, http.StatusBadRequest},
		{"fail/confirm-no", "", "confirm=no", nil, http.StatusBadRequest},
		{"fail/confirm-upper", "", "confirm=YES", nil, http.StatusBadRequest},
		{"fail/confirm-twice", "", "confirm=yes&confirm=yes", nil, http.StatusBadRequest},
		{"fail/in-url-only", "confirm=yes", "", nil, http.StatusBadRequest},
		{"fail/malformed", "", "confirm=yes&x=%zz", nil, http.StatusBadRequest},
		{"fail/cross-site", "", "confirm=yes", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, http.StatusForbidden},
		{"fail/foreign-origin", "", "confirm=yes", map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
	} {
		for _, a := range actions {
			t.Run(a.action+"/"+tc.name, func(t *testing.T) {
				e := newEnv(t)
				e.addAdmin("alice")
				e.addFullUser("carol")
				before := e.methods("carol")
				path := "/admin/users/carol/" + a.action
				if tc.query != "" {
					path += "?" + tc.query
				}
				req, err := http.NewRequest("POST", e.srv.URL+path, strings.NewReader(tc.body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				for k, v := range tc.headers {
					req.Header.Set(k, v)
				}
				req.AddCookie(&http.Cookie{Name: "u", Value: "alice"})
				c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				body := string(b)
				if resp.StatusCode != tc.status {
					t.Errorf("status %d, want %d:\n%.2000s", resp.StatusCode, tc.status, body)
				}
				want := before
				if tc.status == http.StatusSeeOther {
					want = a.change(before)
				}
				if got := e.methods("carol"); got != want {
					t.Errorf("carol after the POST:\n got  %+v\n want %+v (before: %+v)", got, want, before)
				}
				switch tc.status {
				case http.StatusSeeOther:
					loc, err := url.Parse(resp.Header.Get("Location"))
					if err != nil || loc.Path != "/admin/users/carol" || loc.Query().Get("done") != a.done {
						t.Errorf("Location %q (%v), want the user's page with the notice %q", resp.Header.Get("Location"), err, a.done)
					}
				case http.StatusBadRequest:
					// The confirmation page again, with why nothing happened.
					for _, w := range []string{notConfirmed, a.heading, `<input type="hidden" name="confirm" value="yes"><button type="submit" class="danger">Yes</button>`} {
						if !strings.Contains(body, w) {
							t.Errorf("the answer lacks %s:\n%s", w, body)
						}
					}
				}
			})
		}
	}
}

// TestConfirmUnknownUser: the confirmation pages and the actions of a user
// that does not exist (or a name that cannot be one) get the user page's
// own 404, and write no audit event.
func TestConfirmUnknownUser(t *testing.T) {
	e := newEnv(t)
	e.addAdmin("alice")
	for _, name := range []string{"nobody", "no%20body"} {
		code, page := e.do("alice", "GET", "/admin/users/"+name, nil)
		i, j := strings.Index(page, `<div class="alert"`), strings.Index(page, "</main>")
		if code != http.StatusNotFound || i < 0 || j < i {
			t.Fatalf("GET /admin/users/%s = %d, want 404 with an alert:\n%s", name, code, page)
		}
		want := page[i:j] // the alert and the page's content
		for _, tc := range []struct {
			method, action string
			form           url.Values
		}{
			{"GET", "revoke-all", nil},
			{"POST", "revoke-all", url.Values{"confirm": {"yes"}}},
			{"POST", "revoke-all", url.Values{}},
			{"GET", "reset-methods", nil},
			{"POST", "reset-methods", url.Values{"confirm": {"yes"}}},
			{"POST", "reset-methods", url.Values{}},
		} {
			t.Run(name+"/"+tc.method+"/"+tc.action+"/"+tc.form.Encode(), func(t *testing.T) {
				code, body := e.do("alice", tc.method, "/admin/users/"+name+"/"+tc.action, tc.form)
				if code != http.StatusNotFound || !strings.Contains(body, want) {
					t.Errorf("%d, want 404 with %s:\n%s", code, want, body)
				}
			})
		}
	}
	evs, err := e.st.Audit(context.Background(), store.AuditFilter{User: "nobody"})
	if err != nil || len(evs) != 0 {
		t.Errorf("audit events of nobody: %v (%v), want none", evs, err)
	}
}
