package integration

import (
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
)

// demoPortalAppPassword walks the demo's portal as a newcomer would, with
// a plain HTTP client: sign in as demo, register an authenticator app
// (the code computed from the secret key on the page), create an app
// password, and returns it as the page shows it.
func demoPortalAppPassword(t *testing.T, base string) string {
	t.Helper()
	c := &http.Client{Timeout: patience, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var cookie string
	do := func(method, path string, form url.Values) (int, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, base+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		for _, ck := range resp.Cookies() {
			if ck.Name == "__Host-passgate-session" {
				cookie = ck.Name + "=" + ck.Value
			}
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := do("POST", "/signin", url.Values{"username": {"demo"}, "password": {"demo-primary-password"}}); code != http.StatusSeeOther || cookie == "" {
		t.Fatalf("portal sign-in: %d, cookie %q", code, cookie)
	}
	_, page := do("GET", "/add/authenticator-app", nil)
	m := regexp.MustCompile(`<output id="secret" class="secret">([A-Z2-7 ]+)</output>`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no secret key on the authenticator page:\n%s", page)
	}
	code, _ := totp.GenerateCode(strings.ReplaceAll(m[1], " ", ""), time.Now())
	if st, page := do("POST", "/add/authenticator-app", url.Values{"code": {code}}); st != http.StatusOK || !strings.Contains(page, "Recovery codes") {
		t.Fatalf("registering the authenticator app: %d\n%s", st, page)
	}
	st, page := do("POST", "/add/app-password", url.Values{"name": {"curl"}, "scope": {"imap", "smtp"}})
	pw := regexp.MustCompile(`<output id="password" class="secret big">([a-z ]+)</output>`).FindStringSubmatch(page)
	if st != http.StatusOK || pw == nil {
		t.Fatalf("creating an app password: %d\n%s", st, page)
	}
	return pw[1]
}
