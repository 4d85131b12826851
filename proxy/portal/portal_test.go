package portal_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/portal"
)

// clock is the tests' movable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeSignIn is an in-process SignIn: users and their passwords; a user
// in refused is refused whatever the password (disabled, locked out).
type fakeSignIn struct {
	mu       sync.Mutex
	st       *store.Store
	pw       map[string]string
	refused  map[string]bool
	failures int
}

func (f *fakeSignIn) Password(ctx context.Context, a portal.Attempt) (portal.Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a.User == "" || f.refused[a.User] || f.pw[a.User] != a.Password {
		f.failures++
		return portal.Account{}, portal.ErrRefused
	}
	st, err := f.st.UserMFA(ctx, a.User)
	return portal.Account{User: a.User, MFA: string(st)}, err
}

func (f *fakeSignIn) SecondFactor(ctx context.Context, a portal.Attempt, check func(context.Context) (bool, error)) error {
	ok, err := check(ctx)
	if err != nil {
		return err
	}
	if !ok {
		f.mu.Lock()
		f.failures++
		f.mu.Unlock()
		return portal.ErrRefused
	}
	return nil
}

type harness struct {
	t     testing.TB
	srv   *httptest.Server
	st    *store.Store
	clock *clock
	sign  *fakeSignIn
}

func newHarness(t testing.TB, mod func(*portal.Options)) *harness {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: filepath.Join(dir, "p.db"), KeyFile: filepath.Join(dir, "p.key"), MaxAppPasswords: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, u := range []struct {
		name string
		mfa  store.MFAState
	}{{"alice", store.MFAEnabled}, {"bob", store.MFAEnforced}} {
		if _, err := st.AddUser(ctx, u.name, u.mfa); err != nil {
			t.Fatal(err)
		}
	}
	c := &clock{t: time.Now()}
	sign := &fakeSignIn{st: st, pw: map[string]string{"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}, refused: map[string]bool{"carol": true}}
	h := &harness{t: t, st: st, clock: c, sign: sign}
	h.srv = httptest.NewUnstartedServer(nil)
	h.srv.StartTLS()
	t.Cleanup(h.srv.Close)
	u, _ := url.Parse(h.srv.URL)
	u.Host = "localhost:" + u.Port()
	o := portal.Options{
		PublicURL: u,
		SignIn:    sign,
		Accounts:  account.New(account.Options{Store: st, Now: c.Now}),
		Sessions:  st,
		Now:       c.Now,
	}
	if mod != nil {
		mod(&o)
	}
	p, err := portal.New(o)
	if err != nil {
		t.Fatal(err)
	}
	h.srv.Config.Handler = p
	return h
}

// browser is one client with its own cookies.
type browser struct {
	h *harness
	c *http.Client
	t testing.TB
}

func (h *harness) browser() *browser { return h.browserFor(h.t) }

// browserFor is a browser whose failures fail t.
func (h *harness) browserFor(t testing.TB) *browser {
	jar, _ := cookiejar.New(nil)
	c := *h.srv.Client() // a copy: each browser has its own jar
	c.Jar = jar
	return &browser{h: h, c: &c, t: t}
}

type resp struct {
	status int
	body   string
	header http.Header
	url    string
}

func (b *browser) do(method, path string, form url.Values, hdr map[string]string) resp {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, b.h.srv.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	r, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer r.Body.Close()
	raw, _ := io.ReadAll(r.Body)
	return resp{status: r.StatusCode, body: string(raw), header: r.Header, url: r.Request.URL.Path}
}

func (b *browser) get(path string) resp                   { return b.do("GET", path, nil, nil) }
func (b *browser) post(path string, form url.Values) resp { return b.do("POST", path, form, nil) }

func (b *browser) cookie() string {
	u, _ := url.Parse(b.h.srv.URL)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == "__Host-passgate-session" {
			return c.Value
		}
	}
	return ""
}

func (b *browser) signIn(user, pw string) resp {
	return b.post("/signin", url.Values{"username": {user}, "password": {pw}})
}

var secretRE = regexp.MustCompile(`<output id="secret" class="secret">([A-Z2-7 ]+)</output>`)
var passwordRE = regexp.MustCompile(`<output id="password" class="secret big">([a-z ]+)</output>`)
var codeRE = regexp.MustCompile(`<li><code>([a-z]{5}-[a-z]{5})</code></li>`)

// registerTOTP adds an authenticator app and returns its seed and the
// recovery codes.
func (b *browser) registerTOTP() (string, []string) {
	t := b.t
	t.Helper()
	r := b.get("/add/authenticator-app")
	m := secretRE.FindStringSubmatch(r.body)
	if m == nil || !strings.Contains(r.body, `alt="QR code"`) || !strings.Contains(r.body, `data:image/png;base64,`) {
		t.Fatalf("authenticator page has no QR code or secret key:\n%s", r.body)
	}
	seed := strings.ReplaceAll(m[1], " ", "")
	code, _ := totp.GenerateCode(seed, b.h.clock.Now())
	r = b.post("/add/authenticator-app", url.Values{"code": {code}})
	codes := codeRE.FindAllStringSubmatch(r.body, -1)
	if r.status != 200 || !strings.Contains(r.body, `<h1 id="recovery-heading">Recovery codes</h1>`) || len(codes) != 10 {
		t.Fatalf("after the code: %d, %d recovery codes:\n%s", r.status, len(codes), r.body)
	}
	var out []string
	for _, c := range codes {
		out = append(out, c[1])
	}
	return seed, out
}

func mustContain(t testing.TB, r resp, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(r.body, s) {
			t.Fatalf("page %s (%d) lacks %q:\n%s", r.url, r.status, s, r.body)
		}
	}
}

const failText = "We couldn&#39;t sign you in. Check what you typed and try again."

func TestHeaders(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	for _, path := range []string{"/signin", "/static/style.css", "/static/portal.js"} {
		r := b.get(path)
		if r.status != 200 {
			t.Fatalf("GET %s = %d", path, r.status)
		}
		for k, want := range map[string]string{
			"Content-Security-Policy":   "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
			"Cache-Control":             "no-store",
			"Referrer-Policy":           "no-referrer",
			"X-Content-Type-Options":    "nosniff",
			"Strict-Transport-Security": "max-age=31536000",
		} {
			if got := r.header.Get(k); got != want {
				t.Errorf("GET %s: %s = %q, want %q", path, k, got, want)
			}
		}
	}
	r := b.get("/signin")
	mustContain(t, r, `<label for="username">User name</label>`, `<label for="password">Password</label>`, `>Sign in</button>`)
	if strings.Contains(r.body, "<script>") || strings.Contains(r.body, "style=") || strings.Contains(r.body, " on") && regexp.MustCompile(` on[a-z]+=`).MatchString(r.body) {
		t.Fatal("the page has inline script or style")
	}
}

func TestSignInFailures(t *testing.T) {
	h := newHarness(t, nil)
	for _, tc := range []struct{ name, user, pw string }{
		{"fail/wrong-password", "alice", "nope"},
		{"fail/unknown-user", "mallory", "alice-pw"},
		{"fail/refused-user", "carol", "carol-pw"},
		{"fail/empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := h.browser()
			r := b.signIn(tc.user, tc.pw)
			if r.status != http.StatusUnauthorized || r.header.Get("Set-Cookie") != "" || b.cookie() != "" {
				t.Fatalf("status %d, Set-Cookie %q", r.status, r.header.Get("Set-Cookie"))
			}
			mustContain(t, r, `role="alert" id="alert">`+failText+`</div>`)
		})
	}
}

func TestCrossOrigin(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	r := b.do("POST", "/signin", url.Values{"username": {"alice"}, "password": {"alice-pw"}},
		map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"})
	if r.status != http.StatusForbidden || b.cookie() != "" {
		t.Fatalf("cross-origin sign-in = %d, want 403 and no cookie", r.status)
	}
	// The public URL's origin is trusted (a proxy in front may change Host).
	pub := "https://localhost:" + strings.Split(h.srv.URL, ":")[2]
	r = b.do("POST", "/signin", url.Values{"username": {"alice"}, "password": {"alice-pw"}},
		map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": pub})
	if r.status != http.StatusOK || b.cookie() == "" {
		t.Fatalf("sign-in from the public origin = %d", r.status)
	}
}

func TestRegisterTOTPThenSignIn(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	b := h.browser()
	r := b.signIn("alice", "alice-pw")
	first := b.cookie()
	if first == "" || r.url != "/security-info" {
		t.Fatalf("sign-in of an enabled user: %d at %s", r.status, r.url)
	}
	mustContain(t, r, "<h1>Security info</h1>", "Add sign-in method", "requires a second sign-in method")
	r = b.get("/add")
	mustContain(t, r, "> Authenticator app</label>", "> Passkey</label>", ">Add</button>")
	if strings.Contains(r.body, "App password") {
		t.Fatal("a user without a second factor is offered app passwords")
	}
	if r := b.get("/add/app-password"); r.url != "/security-info" {
		t.Fatalf("app password page before registration: at %s", r.url)
	}
	seed, codes := b.registerTOTP()
	if b.cookie() == first {
		t.Fatal("the session id did not change at registration")
	}
	if st, _ := h.st.UserMFA(ctx, "alice"); st != store.MFAEnforced {
		t.Fatalf("state after registration = %s, want enforced", st)
	}
	r = b.get("/security-info")
	mustContain(t, r, "<span class=\"kind\">Authenticator app</span>", `aria-label="Delete Authenticator app"`, "10 recovery codes left")

	// Sign out ends the session on the server: the old cookie is dead.
	old := b.cookie()
	r = b.post("/signout", url.Values{})
	mustContain(t, r, "<h1>Sign in</h1>")
	if _, err := h.st.GetWebSession(ctx, hashOf(old)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("session after sign-out: %v", err)
	}

	// The second step: the code used at registration is refused (used
	// once), the next one passes; a recovery code passes once.
	b2 := h.browser()
	r = b2.signIn("alice", "alice-pw")
	if r.url != "/signin/verify" {
		t.Fatalf("enforced user with an app: at %s", r.url)
	}
	mustContain(t, r, `<label for="code">Code</label>`, ">Verify</button>")
	code, _ := totp.GenerateCode(seed, h.clock.Now())
	r = b2.post("/signin/verify", url.Values{"code": {code}})
	if r.status != http.StatusUnauthorized {
		t.Fatalf("a code used before = %d, want 401", r.status)
	}
	mustContain(t, r, failText)
	partial := b2.cookie()
	h.clock.Add(30 * time.Second)
	code, _ = totp.GenerateCode(seed, h.clock.Now())
	r = b2.post("/signin/verify", url.Values{"code": {code}})
	if r.url != "/security-info" || b2.cookie() == partial {
		t.Fatalf("next code: at %s, new id %v", r.url, b2.cookie() != partial)
	}
	for i, want := range []int{http.StatusOK, http.StatusUnauthorized} {
		b3 := h.browser()
		b3.signIn("alice", "alice-pw")
		r = b3.post("/signin/verify", url.Values{"code": {strings.ToUpper(codes[0])}})
		if r.status != want {
			t.Fatalf("recovery code, use %d = %d, want %d", i+1, r.status, want)
		}
	}
}

func hashOf(id string) []byte {
	h := sha256Sum(id)
	return h[:]
}

func TestAppPasswords(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	b.registerTOTP()
	r := b.post("/add", url.Values{"method": {"app-password"}})
	mustContain(t, r, `<label for="name">Name</label>`, "<summary>Advanced</summary>", ">Next</button>")
	r = b.post("/add/app-password", url.Values{"name": {"Outlook 2010"}, "scope": {"imap", "smtp"}, "expires": {"90d"}})
	m := passwordRE.FindStringSubmatch(r.body)
	if m == nil || !regexp.MustCompile(`^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$`).MatchString(m[1]) {
		t.Fatalf("no password in four groups of four:\n%s", r.body)
	}
	mustContain(t, r, `<label for="password">Password</label>`, ">Copy</button>", "will not be shown again", ">Done</button>")
	ap, err := h.st.FindAppPassword(context.Background(), "alice", m[1])
	if err != nil || ap.Label != "Outlook 2010" || strings.Join(ap.Scopes, ",") != "imap,smtp" || ap.ExpiresAt == nil {
		t.Fatalf("stored app password = %+v, %v", ap, err)
	}
	for _, tc := range []struct {
		name, label, want string
	}{
		{"fail/name-taken", "outlook 2010", "That name is already in use"},
		{"fail/empty", "  ", "Name is empty"},
		{"fail/bidi", "Outlook\u202e0102", "bidirectional"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.post("/add/app-password", url.Values{"name": {tc.label}, "scope": {"imap"}})
			if r.status != http.StatusUnprocessableEntity {
				t.Fatalf("status %d", r.status)
			}
			mustContain(t, r, `role="alert"`, tc.want)
		})
	}
	b.post("/add/app-password", url.Values{"name": {"Phone"}, "scope": {"imap"}})
	r = b.post("/add/app-password", url.Values{"name": {"Printer"}, "scope": {"smtp"}})
	mustContain(t, r, "limit reached (2)")

	r = b.get("/security-info")
	mustContain(t, r, `aria-label="Delete Outlook 2010"`, "Scopes: IMAP, SMTP", "Last used: never", "; expires ")
	// The last use as the decision records it: time, address (with the
	// client's port, which the page leaves out), protocol, client name.
	used := h.clock.Now().Add(time.Minute)
	if err := h.st.TouchAppPassword(context.Background(), ap.ID, store.Usage{At: used, Addr: "[::ffff:192.0.2.7]:51234", Proto: "imap", Client: "Thunderbird 128.0"}); err != nil {
		t.Fatal(err)
	}
	r = b.get("/security-info")
	mustContain(t, r, "Last used: "+used.UTC().Format("2006-01-02 15:04 UTC")+" from 192.0.2.7 over IMAP by Thunderbird 128.0")
	if strings.Contains(r.body, "51234") {
		t.Fatal("the page shows the port of the last use")
	}
	r = b.get("/delete/app-password/" + itoa(ap.ID))
	mustContain(t, r, "Outlook 2010 will stop working", "cannot be undone", ">Yes</button>", ">Cancel</button>")
	r = b.post("/delete/app-password/"+itoa(ap.ID), url.Values{})
	mustContain(t, r, "The app password has been deleted.")
	if strings.Contains(r.body, "Outlook 2010") {
		t.Fatal("the deleted app password is still named on the page")
	}
	if _, err := h.st.FindAppPassword(context.Background(), "alice", m[1]); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	ev, _ := h.st.Audit(context.Background(), store.AuditFilter{User: "alice"})
	var actions []string
	for _, e := range ev {
		if e.Actor == "web:alice" && strings.HasPrefix(e.Detail, "addr=127.0.0.1:") {
			actions = append(actions, e.Action+"/"+e.Outcome)
		}
	}
	for _, want := range []string{"mfa.totp.add/success", "user.set-mfa/success", "app-password.create/success", "app-password.create/failure", "app-password.delete/success"} {
		if !strings.Contains(strings.Join(actions, " "), want) {
			t.Errorf("audit lacks %s: %v", want, actions)
		}
	}

	// App passwords switched off: none is created, the page says so.
	if err := h.st.SetAllowAppPasswords(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	r = b.post("/add/app-password", url.Values{"name": {"Tablet"}, "scope": {"imap"}})
	mustContain(t, r, "App passwords are switched off")
	mustContain(t, b.get("/security-info"), "App passwords are switched off", `aria-label="Delete Phone"`)
}

// TestAppPasswordNetworks: the Allowed networks field under Advanced
// reaches the store (a single address as /32 or /128, networks
// canonical), shows in the list and on the new password's page, and a
// malformed one is refused with a message naming it, the form kept and
// Advanced open.
func TestAppPasswordNetworks(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	b.registerTOTP()
	mustContain(t, b.get("/add/app-password"), `<label for="networks">Allowed networks</label>`, `aria-describedby="networks-hint"`, "<details>")
	ctx := context.Background()
	for _, tc := range []struct {
		name, field string
		stored      string // the networks as stored and listed
		refused     string // part of the message; "" when accepted
	}{
		{"ok/empty", "  ", "", ""},
		{"ok/cidr", "192.0.2.0/24", "192.0.2.0/24", ""},
		{"ok/host-bits", "192.0.2.77/24", "192.0.2.0/24", ""},
		{"ok/address-v4", "192.0.2.7", "192.0.2.7/32", ""},
		{"ok/address-v6", "2001:db8::1", "2001:db8::1/128", ""},
		{"ok/several", "192.0.2.0/24, 2001:db8::/32\n198.51.100.9", "192.0.2.0/24, 2001:db8::/32, 198.51.100.9/32", ""},
		{"fail/prefix-too-long", "192.0.2.0/33", "", "192.0.2.0/33&#34; is not an address or a network"},
		{"fail/word", "192.0.2.0/24, office", "", "office&#34; is not an address or a network"},
		{"fail/zone", "fe80::1%eth0", "", "fe80::1%eth0&#34; is not an address or a network"},
		{"fail/too-many", strings.Repeat("192.0.2.1,", 33), "", "at most 32, you typed 33"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.post("/add/app-password", url.Values{"name": {"Printer"}, "scope": {"imap", "smtp", "ldap"}, "networks": {tc.field}})
			if tc.refused != "" {
				if r.status != http.StatusUnprocessableEntity {
					t.Fatalf("status %d, want 422", r.status)
				}
				mustContain(t, r, `role="alert"`, tc.refused, "<details open>", `aria-invalid="true"`, `value="Printer"`)
				if aps, _ := h.st.ListAppPasswords(ctx, "alice"); len(aps) != 0 {
					t.Fatalf("a refused form stored %+v", aps)
				}
				return
			}
			m := passwordRE.FindStringSubmatch(r.body)
			if m == nil {
				t.Fatalf("no new password:\n%s", r.body)
			}
			ap, err := h.st.FindAppPassword(ctx, "alice", m[1])
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ap.Networks {
				got = append(got, p.String())
			}
			if strings.Join(got, ", ") != tc.stored {
				t.Errorf("stored networks %q, want %q", got, tc.stored)
			}
			list := b.get("/security-info")
			if tc.stored == "" {
				if strings.Contains(r.body, "only from") || strings.Contains(list.body, "Only from") {
					t.Errorf("an app password without networks is shown as restricted")
				}
			} else {
				mustContain(t, r, "usable only from "+tc.stored)
				mustContain(t, list, "Only from "+tc.stored)
			}
			if _, err := h.st.DeleteAppPassword(ctx, "alice", "Printer"); err != nil {
				t.Fatal(err)
			}
		})
	}
	ev, _ := h.st.Audit(ctx, store.AuditFilter{User: "alice"})
	var found bool
	for _, e := range ev {
		found = found || (e.Action == "app-password.create" && strings.Contains(e.Detail, "networks=192.0.2.0/24"))
	}
	if !found {
		t.Errorf("no audit event names the networks: %+v", ev)
	}
}

func TestTimeoutsAndReauth(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	seed, _ := b.registerTOTP()

	// Re-authentication after 5 minutes.
	h.clock.Add(6 * time.Minute)
	r := b.get("/add/app-password")
	if r.url != "/verify-identity" {
		t.Fatalf("a change 6 minutes after sign-in: at %s", r.url)
	}
	r = b.post("/verify-identity", url.Values{"password": {"alice-pw"}})
	if r.url != "/signin/verify" {
		t.Fatalf("after the password: at %s", r.url)
	}
	before := b.cookie()
	code, _ := totp.GenerateCode(seed, h.clock.Now())
	r = b.post("/signin/verify", url.Values{"code": {code}})
	if r.url != "/add/app-password" || b.cookie() == before {
		t.Fatalf("after the step up: at %s, new id %v", r.url, b.cookie() != before)
	}

	// Idle timeout.
	h.clock.Add(16 * time.Minute)
	if r := b.get("/security-info"); r.url != "/signin" {
		t.Fatalf("after 16 idle minutes: at %s", r.url)
	}

	// Absolute timeout: active every 10 minutes, ended after 8 hours.
	b2 := h.browser()
	b2.signIn("alice", "alice-pw")
	h.clock.Add(30 * time.Second)
	code, _ = totp.GenerateCode(seed, h.clock.Now())
	if r := b2.post("/signin/verify", url.Values{"code": {code}}); r.url != "/security-info" {
		t.Fatalf("second factor: at %s", r.url)
	}
	for range 47 {
		h.clock.Add(10 * time.Minute)
		if r := b2.get("/security-info"); r.url != "/security-info" {
			t.Fatalf("active session ended early at %s", h.clock.Now())
		}
	}
	h.clock.Add(10 * time.Minute)
	if r := b2.get("/security-info"); r.url != "/signin" {
		t.Fatalf("after 8h00m30s: at %s", r.url)
	}
}

// TestReauthReturnsOnlyToPortalPages: a link to a delete page with
// escaped slashes and dot-dots (which ServeMux does not clean) makes a
// stale session verify its identity, and then lands on Security info,
// never on the path the link made up (a redirect cleans it into
// /\evil.example, another site to a browser).
func TestReauthReturnsOnlyToPortalPages(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	seed, _ := b.registerTOTP()
	h.clock.Add(6 * time.Minute)
	if r := b.get("/delete/app-password/..%2F..%2F%5Cevil.example"); r.url != "/verify-identity" {
		t.Fatalf("the crafted link of a stale session: at %s (%d), want /verify-identity", r.url, r.status)
	}
	if r := b.post("/verify-identity", url.Values{"password": {"alice-pw"}}); r.url != "/signin/verify" {
		t.Fatalf("after the password: at %s", r.url)
	}
	h.clock.Add(31 * time.Second)
	code, _ := totp.GenerateCode(seed, h.clock.Now())
	if r := b.post("/signin/verify", url.Values{"code": {code}}); r.url != "/security-info" {
		t.Fatalf("after verifying: at %q, want /security-info", r.url)
	}
}

func TestSignOutEverywhereAndSessions(t *testing.T) {
	h := newHarness(t, nil)
	a, b := h.browser(), h.browser()
	a.signIn("alice", "alice-pw")
	a.registerTOTP()
	h.clock.Add(30 * time.Second)
	b.signIn("alice", "alice-pw")
	if _, err := h.st.UseRecoveryCode(context.Background(), "alice", "x"); err != nil {
		t.Fatal(err)
	}
	r := a.get("/security-info")
	if n := strings.Count(r.body, "Signed in "); n != 2 {
		t.Fatalf("sessions listed: %d, want 2: %d %s\n%s", n, r.status, r.url, r.body)
	}
	mustContain(t, r, "(this session)", ">Sign out everywhere</button>")
	a.post("/signout-everywhere", url.Values{})
	if l, _ := h.st.ListWebSessions(context.Background(), "alice"); len(l) != 0 {
		t.Fatalf("%d sessions left after Sign out everywhere", len(l))
	}
	if r := b.get("/signin/verify"); r.url == "/signin/verify" {
		t.Fatal("the other browser's session survived")
	}
}

func TestRegistrationNetworks(t *testing.T) {
	h := newHarness(t, func(o *portal.Options) { o.RegistrationNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} })
	b := h.browser()
	r := b.signIn("alice", "alice-pw")
	mustContain(t, r, "only from your organisation&#39;s network")
	if strings.Contains(r.body, `href="/add"`) {
		t.Fatal("Add sign-in method offered outside the registration networks")
	}
	r = b.get("/add/authenticator-app")
	if secretRE.MatchString(r.body) {
		t.Fatal("a secret was shown outside the registration networks")
	}
	if _, _, _, err := h.st.TOTP(context.Background(), "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("registered outside the registration networks")
	}
}

func TestSecondFactorTriesEndSession(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	b.registerTOTP()
	b.post("/signout", url.Values{})
	b.signIn("alice", "alice-pw")
	for i := 0; i < 5; i++ {
		r := b.post("/signin/verify", url.Values{"code": {"000000"}})
		mustContain(t, r, failText)
	}
	if b.cookie() != "" {
		t.Fatal("the session survived five wrong codes")
	}
}

// TestReauthWhileRegistering: a user who has no second factor yet and
// signed in more than 5 minutes ago types the password again before
// registering one, and stays limited to registering.
func TestReauthWhileRegistering(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser()
	b.signIn("alice", "alice-pw")
	h.clock.Add(6 * time.Minute)
	if r := b.get("/add/authenticator-app"); r.url != "/verify-identity" || secretRE.MatchString(r.body) {
		t.Fatalf("registering 6 minutes after sign-in: at %s", r.url)
	}
	if r := b.post("/verify-identity", url.Values{"password": {"nope"}}); r.status != http.StatusUnauthorized {
		t.Fatalf("a wrong password at re-authentication = %d", r.status)
	}
	before := b.cookie()
	r := b.post("/verify-identity", url.Values{"password": {"alice-pw"}})
	if r.url != "/add/authenticator-app" || !secretRE.MatchString(r.body) || b.cookie() == before {
		t.Fatalf("after the password: at %s, new id %v", r.url, b.cookie() != before)
	}
	if r := b.get("/add/app-password"); r.url != "/security-info" {
		t.Fatalf("re-authentication with the password alone opened the app password page (at %s)", r.url)
	}
	b.registerTOTP()
}
