package admin_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/admin"
	"github.com/passgate/passgate/proxy/api"
)

// cookieSessions signs in whoever the "u" cookie names; with a "stale"
// cookie, the sign-in is older than a change allows.
type cookieSessions struct{}

func (cookieSessions) SignedIn(_ http.ResponseWriter, r *http.Request) (string, bool) {
	c, err := r.Cookie("u")
	if err != nil {
		return "", false
	}
	return c.Value, true
}

func (cs cookieSessions) Reverify(w http.ResponseWriter, r *http.Request, next string) bool {
	if cs.Recent(w, r) {
		return true
	}
	http.Redirect(w, r, "/verify-identity?next="+url.QueryEscape(next), http.StatusSeeOther)
	return false
}

func (cookieSessions) Recent(_ http.ResponseWriter, r *http.Request) bool {
	_, err := r.Cookie("stale")
	return err != nil
}

type env struct {
	t   *testing.T
	st  *store.Store
	srv *httptest.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: filepath.Join(dir, "p.db"), KeyFile: filepath.Join(dir, "p.key")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	ops := account.NewAdmin(account.AdminOptions{Store: st})
	pub, _ := url.Parse("http://localhost")
	pages, err := admin.New(admin.Options{Ops: ops, Sessions: cookieSessions{}, PublicURL: pub})
	if err != nil {
		t.Fatal(err)
	}
	engine := policy.New(policy.Options{Store: st, FailureDelay: -1})
	a, err := api.New(api.Options{Ops: ops, Tokens: api.EngineTokens{Engine: engine, Check: ops}, Sessions: cookieSessions{},
		IsAdmin: func(ctx context.Context, u string) (bool, error) { return admin.IsAdmin(ctx, ops, u) }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/admin", pages)
	mux.Handle("/admin/", pages)
	mux.Handle("/api/v1/", a)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &env{t: t, st: st, srv: srv}
}

func (e *env) do(user, method, path string, form url.Values) (int, string) {
	e.t.Helper()
	var cookies []*http.Cookie
	if user != "" {
		cookies = append(cookies, &http.Cookie{Name: "u", Value: user})
	}
	code, _, body := e.request(method, path, form, cookies...)
	return code, body
}

// request sends a request with form (if not nil) and cookies, without
// following a redirect.
func (e *env) request(method, path string, form url.Values, cookies ...*http.Cookie) (int, http.Header, string) {
	e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

var adminPaths = []struct{ method, path string }{
	{"GET", "/admin"}, {"GET", "/admin/users"}, {"GET", "/admin/mfa"}, {"POST", "/admin/mfa"},
	{"GET", "/admin/users/bob"}, {"POST", "/admin/users/bob/mfa"},
	{"GET", "/admin/users/bob/revoke-all"}, {"POST", "/admin/users/bob/revoke-all"},
	{"GET", "/admin/users/bob/reset-methods"}, {"POST", "/admin/users/bob/reset-methods"}, {"GET", "/admin/settings"}, {"POST", "/admin/settings"},
	{"GET", "/admin/audit"}, {"GET", "/admin/rollout"},
	{"GET", "/api/v1/users"}, {"POST", "/api/v1/users"}, {"GET", "/api/v1/users/bob"}, {"DELETE", "/api/v1/users/bob"},
	{"PUT", "/api/v1/users/bob/mfa"}, {"PUT", "/api/v1/users/bob/admin"}, {"GET", "/api/v1/users/bob/app-passwords"},
	{"POST", "/api/v1/users/bob/app-passwords"}, {"DELETE", "/api/v1/users/bob/app-passwords"},
	{"DELETE", "/api/v1/users/bob/app-passwords/x"}, {"GET", "/api/v1/users/bob/methods"}, {"DELETE", "/api/v1/users/bob/methods"},
	{"GET", "/api/v1/settings"}, {"PUT", "/api/v1/settings"}, {"GET", "/api/v1/audit"},
}

// TestNonAdminForbidden: a signed-in non-admin, and an admin without a
// second factor, get 403 on every admin page and API path; nobody signed
// in is sent to sign in (pages) or gets 401 (API).
func TestNonAdminForbidden(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, u := range []string{"alice", "bob", "mallory"} {
		if _, err := e.st.AddUser(ctx, u, store.MFAEnabled); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.st.SetAdmin(ctx, "mallory", true); err != nil { // admin, but no second factor
		t.Fatal(err)
	}
	for _, u := range []string{"bob", "mallory"} {
		for _, p := range adminPaths {
			if code, body := e.do(u, p.method, p.path, url.Values{}); code != http.StatusForbidden {
				t.Errorf("%s: %s %s = %d, want 403: %.200s", u, p.method, p.path, code, body)
			}
		}
	}
	for _, p := range adminPaths {
		want := http.StatusSeeOther
		if strings.HasPrefix(p.path, "/api/") {
			want = http.StatusUnauthorized
		}
		if code, _ := e.do("", p.method, p.path, url.Values{}); code != want {
			t.Errorf("signed out: %s %s = %d, want %d", p.method, p.path, code, want)
		}
	}
	if m, _ := e.st.UserMFA(ctx, "bob"); m != store.MFAEnabled {
		t.Errorf("bob's state changed to %s by a refused request", m)
	}
}

// doStale is do with the admin's sign-in older than a change allows.
func (e *env) doStale(user, method, path string, form url.Values) (int, http.Header, string) {
	e.t.Helper()
	return e.request(method, path, form, &http.Cookie{Name: "u", Value: user}, &http.Cookie{Name: "stale", Value: "1"})
}

// makeAdmin makes name an admin with a second factor (an authenticator
// app), a user with MFA enabled.
func (e *env) makeAdmin(ctx context.Context, name string) {
	e.t.Helper()
	if _, err := e.st.AddUser(ctx, name, store.MFAEnabled); err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.SetAdmin(ctx, name, true); err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.SetTOTP(ctx, name, "JBSWY3DPEHPK3PXP"); err != nil {
		e.t.Fatal(err)
	}
}

// TestChangesNeedARecentSignIn: with a sign-in older than the portal's
// ReauthAfter, an admin still reads every page and API path, but every
// change is refused and changes nothing: a page's form sends the admin
// to "Verify it's you" and back to the page it was on, the API answers
// 403 reauthentication_required.
func TestChangesNeedARecentSignIn(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.makeAdmin(ctx, "alice")
	if _, err := e.st.AddUser(ctx, "bob", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	back := map[string]string{"/admin/users/bob/mfa": "/admin/users/bob"}
	for _, p := range adminPaths {
		code, h, body := e.doStale("alice", p.method, p.path, url.Values{"action": {"enforce"}, "users": {"bob"}, "confirm": {"yes"}})
		switch {
		case p.method == "GET" && code != http.StatusOK && code != http.StatusNotFound && (code != http.StatusSeeOther || p.path != "/admin"):
			t.Errorf("stale: %s %s = %d, want it readable: %.200s", p.method, p.path, code, body)
		case p.method == "GET":
		case strings.HasPrefix(p.path, "/api/"):
			if code != http.StatusForbidden || !strings.Contains(body, `"reauthentication_required"`) {
				t.Errorf("stale: %s %s = %d %.200s, want 403 reauthentication_required", p.method, p.path, code, body)
			}
		default:
			want := p.path
			if b, ok := back[p.path]; ok {
				want = b
			}
			if loc := h.Get("Location"); code != http.StatusSeeOther || loc != "/verify-identity?next="+url.QueryEscape(want) {
				t.Errorf("stale: %s %s = %d to %q, want 303 to verify and back to %s", p.method, p.path, code, loc, want)
			}
		}
	}
	u, err := e.st.GetUser(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if u.MFA != store.MFAEnabled {
		t.Errorf("bob's MFA state is %s after stale changes, want it unchanged (enabled)", u.MFA)
	}
	// A recent sign-in changes it.
	if code, _ := e.do("alice", "POST", "/admin/users/bob/mfa", url.Values{"action": {"enforce"}}); code != http.StatusSeeOther {
		t.Fatalf("recent: POST /admin/users/bob/mfa = %d", code)
	}
	if u, _ := e.st.GetUser(ctx, "bob"); u.MFA != store.MFAEnforced {
		t.Errorf("bob's MFA state is %s after a recent admin's change, want enforced", u.MFA)
	}
}

// TestAdminPages walks the pages as an admin with a second factor.
func TestAdminPages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i := range 120 {
		if _, err := e.st.AddUser(ctx, fmt.Sprintf("user%03d", i), store.MFADisabled); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		if _, err := e.st.AddUser(ctx, u, store.MFADisabled); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.st.SetMFA(ctx, "alice", store.MFAEnforced); err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetAdmin(ctx, "alice", true); err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetTOTP(ctx, "alice", "JBSWY3DPEHPK3PXP"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.st.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "Phone"}); err != nil {
		t.Fatal(err)
	}

	// Active users: pages of 50 with a next link, search.
	code, body := e.do("alice", "GET", "/admin/users", nil)
	if code != 200 || strings.Count(body, `<th scope="row" role="rowheader">`) != 50 || !strings.Contains(body, `rel="next"`) || !strings.Contains(body, "123 user(s)") {
		t.Fatalf("first page: %d\n%.2000s", code, body)
	}
	code, body = e.do("alice", "GET", "/admin/users?after=user099", nil)
	if code != 200 || strings.Count(body, `<th scope="row" role="rowheader">`) != 20 || strings.Contains(body, `rel="next"`) {
		t.Errorf("last page: %d rows", strings.Count(body, `<th scope="row" role="rowheader">`))
	}
	code, body = e.do("alice", "GET", "/admin/users?search=bo", nil)
	if code != 200 || !strings.Contains(body, ">bob</a>") || strings.Contains(body, ">carol</a>") {
		t.Errorf("search bo: %d\n%.1500s", code, body)
	}
	if !strings.Contains(e.mustGet("/admin/users?search=alice"), `data-label="Multi-factor auth status">Enforced</td><td role="cell" data-label="App passwords">1</td>`) {
		t.Errorf("alice's row lacks her state and app-password count")
	}

	// Tick bob and carol, Enable; then Enforce bob from his page.
	code, _ = e.do("alice", "POST", "/admin/mfa", url.Values{"user": {"bob", "carol"}, "action": {"enable"}, "back": {"/admin/mfa?search=o"}})
	if code != http.StatusSeeOther {
		t.Fatalf("bulk enable: %d", code)
	}
	e.wantMFA("bob", store.MFAEnabled)
	e.wantMFA("carol", store.MFAEnabled)
	e.do("alice", "POST", "/admin/users/bob/mfa", url.Values{"action": {"enforce"}})
	e.wantMFA("bob", store.MFAEnforced)

	// Rollout: carol's primary-password login while enabled.
	if err := e.st.Record(ctx, store.AuditEvent{Time: time.Now(), Action: "login", Subject: "carol", Outcome: "success",
		Protocol: "imap", ClientAddr: "192.0.2.7", ClientPort: 4321, TLS: true, Credential: store.CredentialPrimary,
		Reason: "primary password accepted; would be refused once enforced", ClientName: "Thunderbird"}); err != nil {
		t.Fatal(err)
	}
	if body := e.mustGet("/admin/rollout"); !strings.Contains(body, ">carol</a>") || !strings.Contains(body, "Thunderbird") || !strings.Contains(body, "192.0.2.7") {
		t.Errorf("rollout lacks carol:\n%s", body)
	}

	// Revoke alice's app passwords; require re-registration (each the
	// Yes of its confirmation page: TestConfirm has the rest).
	e.do("alice", "POST", "/admin/users/alice/revoke-all", url.Values{"confirm": {"yes"}})
	if aps, _ := e.st.ListAppPasswords(ctx, "alice"); len(aps) != 0 {
		t.Errorf("alice still has %d app passwords", len(aps))
	}
	e.do("alice", "POST", "/admin/users/bob/reset-methods", url.Values{"confirm": {"yes"}})
	e.wantMFA("bob", store.MFAEnabled)

	// Settings.
	if code, _ := e.do("alice", "POST", "/admin/settings", url.Values{"allow_app_passwords": {"false"}}); code != http.StatusSeeOther {
		t.Errorf("save settings: %d", code)
	}
	if ok, _ := e.st.AllowAppPasswords(ctx); ok {
		t.Error("app passwords still allowed after choosing Do not allow")
	}
	if body := e.mustGet("/admin/settings"); !strings.Contains(body, `value="false" checked> Do not allow users`) || strings.Contains(body, `value="true" checked`) {
		t.Errorf("settings page:\n%s", body)
	}

	// Audit: every change above with alice as actor, filters.
	body = e.mustGet("/admin/audit?user=bob")
	for _, want := range []string{"admin:alice", "user.set-mfa", "mfa.reset"} {
		if !strings.Contains(body, want) {
			t.Errorf("audit of bob lacks %q", want)
		}
	}
	if body := e.mustGet("/admin/audit?protocol=imap&outcome=success"); !strings.Contains(body, "Thunderbird") || strings.Contains(body, "user.set-mfa") {
		t.Errorf("audit filtered by protocol:\n%.3000s", body)
	}
}

func (e *env) mustGet(path string) string {
	e.t.Helper()
	code, body := e.do("alice", "GET", path, nil)
	if code != 200 {
		e.t.Fatalf("GET %s = %d", path, code)
	}
	return body
}

func (e *env) wantMFA(user string, want store.MFAState) {
	e.t.Helper()
	if got, err := e.st.UserMFA(context.Background(), user); err != nil || got != want {
		e.t.Errorf("%s: MFA %s (%v), want %s", user, got, err, want)
	}
}

// TestSecurityHeaders: every admin response carries the admin center's
// security headers, a refusal too.
func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(e.srv.URL + "/admin/users") // signed out: sent to sign in
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for name, want := range map[string]string{
		"Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"Cache-Control":           "no-store",
		"X-Frame-Options":         "DENY",
	} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	// The API's answers, signed out (401) and as an admin (200).
	e.makeAdmin(context.Background(), "alice")
	for _, user := range []string{"", "alice"} {
		req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/users", nil)
		if user != "" {
			req.AddCookie(&http.Cookie{Name: "u", Value: user})
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for name, want := range map[string]string{
			"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"Cache-Control":           "no-store",
		} {
			if got := resp.Header.Get(name); got != want {
				t.Errorf("API (%d, signed in %q): %s = %q, want %q", resp.StatusCode, user, name, got, want)
			}
		}
	}
}
