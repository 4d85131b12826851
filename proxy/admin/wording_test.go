package admin_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/admin"
)

// addAdmin adds name as an admin with an authenticator app (enforced),
// so that the pages let name in.
func (e *env) addAdmin(name string) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.st.AddUser(ctx, name, store.MFAEnforced); err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.SetAdmin(ctx, name, true); err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.SetTOTP(ctx, name, "JBSWY3DPEHPK3PXP"); err != nil {
		e.t.Fatal(err)
	}
}

// TestWording: the admin pages use portal.md's words exactly, as the
// visible text and accessible name of their controls (help desks' texts
// and users' scripts written for Microsoft's pages look for them), and
// none of the former wordings that deviated from it.
// submit sends a form as alice (an admin) and returns the answer as is,
// without following a redirect.
func (e *env) submit(t *testing.T, method, path, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "u", Value: "alice"})
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestWording(t *testing.T) {
	e := newEnv(t)
	e.addAdmin("alice")
	ctx := context.Background()
	for u, st := range map[string]store.MFAState{"bob": store.MFADisabled, "carol": store.MFAEnabled} {
		if _, err := e.st.AddUser(ctx, u, st); err != nil {
			t.Fatal(err)
		}
	}
	const (
		allow  = "Allow users to create app passwords to sign in to non-browser apps"
		forbid = "Do not allow users to create app passwords to sign in to non-browser apps"
	)
	for _, tc := range []struct {
		name, path string
		want       []string // in the page's HTML
		notWant    []string
	}{
		{"users", "/admin/users", []string{
			`<h1>Active users</h1>`,
			`<label for="search">Search</label>`, // the field: <input id="search">
			`<button type="submit" class="secondary">Search</button>`,
			`data-label="Multi-factor auth status">Disabled</td>`,
			`data-label="Multi-factor auth status">Enabled</td>`,
			`data-label="Multi-factor auth status">Enforced</td>`,
		}, []string{"Search users", `>disabled<`, `>enabled<`, `>enforced<`}},
		{"mfa", "/admin/mfa", []string{
			`<h1>Multi-factor authentication</h1>`,
			`<label for="search">Search</label>`,
			`<input type="checkbox" name="user" value="bob" id="tick-bob">`,
			`<label for="tick-bob">bob</label>`,
			`data-label="Multi-factor auth status">Disabled</td>`,
			`data-label="Multi-factor auth status">Enabled</td>`,
			`data-label="Multi-factor auth status">Enforced</td>`,
			`value="enable" class="primary">Enable</button>`,
			`value="enforce" class="primary">Enforce</button>`,
			`value="disable" class="secondary">Disable</button>`,
		}, []string{"Search users", `>disabled<`, `>enabled<`, `>enforced<`}},
		{"user", "/admin/users/carol", []string{
			`Multi-factor auth status: <strong>Enabled</strong>`,
			`>Enable</button>`, `>Enforce</button>`, `>Disable</button>`,
			`aria-describedby="revoke-hint">Revoke app passwords</button>`,
			`aria-describedby="reset-hint">Require re-register MFA</button>`,
		}, []string{"Revoke all app passwords", "re-registering", `<strong>enabled</strong>`}},
		{"settings", "/admin/settings", []string{
			`<input type="radio" name="allow_app_passwords" value="true" checked> ` + allow + `</label>`,
			`<input type="radio" name="allow_app_passwords" value="false"> ` + forbid + `</label>`,
			`<button type="submit" class="primary">Save</button>`,
		}, []string{`type="checkbox"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkPage(t, e.mustGet(tc.path), tc.want, tc.notWant)
		})
	}
}

// checkPage fails t for each of want that body lacks and each of notWant
// that it has, and then logs the page.
func checkPage(t *testing.T, body string, want, notWant []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("the page lacks %s", w)
		}
	}
	for _, w := range notWant {
		if strings.Contains(body, w) {
			t.Errorf("the page still has %s", w)
		}
	}
	if t.Failed() {
		t.Logf("page:\n%s", body)
	}
}

// TestMFANotices: the notice after Enable, Enforce or Disable names the
// new state as the pages show it.
func TestMFANotices(t *testing.T) {
	e := newEnv(t)
	e.addAdmin("alice")
	if _, err := e.st.AddUser(context.Background(), "bob", store.MFADisabled); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, path string
		form               url.Values
		want               string
	}{
		{"bulk/enable", "POST", "/admin/mfa", url.Values{"user": {"bob"}, "action": {"enable"}}, "Multi-factor authentication is now Enabled for bob."},
		{"user/enforce", "POST", "/admin/users/bob/mfa", url.Values{"action": {"enforce"}}, "Multi-factor authentication is now Enforced for bob."},
		{"user/disable", "POST", "/admin/users/bob/mfa", url.Values{"action": {"disable"}}, "Multi-factor authentication is now Disabled for bob."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.submit(t, tc.method, tc.path, tc.form.Encode())
			resp.Body.Close()
			loc, err := url.Parse(resp.Header.Get("Location"))
			if resp.StatusCode != http.StatusSeeOther || err != nil {
				t.Fatalf("%d, Location %q (%v)", resp.StatusCode, resp.Header.Get("Location"), err)
			}
			if got := loc.Query().Get("done"); got != tc.want {
				t.Errorf("notice %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSettingsSave: the Settings form sets the switch from its radio
// buttons (true or false; on, from the former checkbox, allows); any other
// request gets the page again with 400 and a message naming both choices,
// and changes nothing, whichever way the switch stood.
func TestSettingsSave(t *testing.T) {
	e := newEnv(t)
	e.addAdmin("alice")
	ctx := context.Background()
	const msg = "Choose “Allow users to create app passwords to sign in to non-browser apps” or “Do not allow users to create app passwords to sign in to non-browser apps”, then Save. Nothing was changed."
	for _, tc := range []struct {
		name   string
		before bool
		body   string // the form as sent
		query  string // in the URL
		status int
		after  bool
	}{
		{"ok/allow", false, "allow_app_passwords=true", "", http.StatusSeeOther, true},
		{"ok/forbid", true, "allow_app_passwords=false", "", http.StatusSeeOther, false},
		{"ok/same", true, "allow_app_passwords=true", "", http.StatusSeeOther, true},
		{"ok/former-checkbox", false, "allow_app_passwords=on", "", http.StatusSeeOther, true},
		{"fail/missing-allowed", true, "", "", http.StatusBadRequest, true},
		{"fail/missing-forbidden", false, "", "", http.StatusBadRequest, false},
		{"fail/empty", true, "allow_app_passwords=", "", http.StatusBadRequest, true},
		{"fail/unknown", true, "allow_app_passwords=no", "", http.StatusBadRequest, true},
		{"fail/case", true, "allow_app_passwords=False", "", http.StatusBadRequest, true},
		{"fail/both", true, "allow_app_passwords=false&allow_app_passwords=true", "", http.StatusBadRequest, true},
		{"fail/in-url-only", true, "", "allow_app_passwords=false", http.StatusBadRequest, true},
		{"fail/malformed", true, "allow_app_passwords=%zz", "", http.StatusBadRequest, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := e.st.SetAllowAppPasswords(ctx, tc.before); err != nil {
				t.Fatal(err)
			}
			path := "/admin/settings"
			if tc.query != "" {
				path += "?" + tc.query
			}
			resp := e.submit(t, "POST", path, tc.body)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if got, err := e.st.AllowAppPasswords(ctx); err != nil || got != tc.after {
				t.Errorf("allowed %v (%v), want %v", got, err, tc.after)
			}
			if tc.status != http.StatusBadRequest {
				return
			}
			// The page again, the message as an alert, the switch as it stands.
			body := string(b)
			if !strings.Contains(body, `<div class="alert" role="alert">`+msg+`</div>`) {
				t.Errorf("no alert with %q:\n%s", msg, body)
			}
			checked := `value="false" checked>`
			if tc.before {
				checked = `value="true" checked>`
			}
			if strings.Count(body, " checked>") != 1 || !strings.Contains(body, checked) {
				t.Errorf("want only %s checked:\n%s", checked, body)
			}
		})
	}
}

// TestParseAllowAppPasswords: the values the Settings form's field may
// carry.
func TestParseAllowAppPasswords(t *testing.T) {
	for _, tc := range []struct {
		name      string
		values    []string
		allow, ok bool
	}{
		{"ok/true", []string{"true"}, true, true},
		{"ok/false", []string{"false"}, false, true},
		{"ok/on", []string{"on"}, true, true},
		{"fail/none", nil, false, false},
		{"fail/empty", []string{""}, false, false},
		{"fail/off", []string{"off"}, false, false},
		{"fail/one", []string{"1"}, false, false},
		{"fail/upper", []string{"TRUE"}, false, false},
		{"fail/space", []string{" true"}, false, false},
		{"fail/two", []string{"true", "true"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allow, ok := admin.ParseAllowAppPasswords(tc.values)
			if allow != tc.allow || ok != tc.ok {
				t.Errorf("ParseAllowAppPasswords(%q) = %v, %v; want %v, %v", tc.values, allow, ok, tc.allow, tc.ok)
			}
		})
	}
}

// TestStateName: the three states in Microsoft's words.
func TestStateName(t *testing.T) {
	for _, tc := range []struct {
		st   account.MFAState
		want string
	}{
		{account.MFADisabled, "Disabled"},
		{account.MFAEnabled, "Enabled"},
		{account.MFAEnforced, "Enforced"},
		{"unknown", "unknown"},
	} {
		if got := admin.StateName(tc.st); got != tc.want {
			t.Errorf("StateName(%q) = %q, want %q", tc.st, got, tc.want)
		}
	}
}
