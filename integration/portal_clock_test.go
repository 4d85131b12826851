package integration

import (
	"context"
	"crypto/subtle"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy/account"
	pgadmin "github.com/passgate/passgate/proxy/admin"
	pgportal "github.com/passgate/passgate/proxy/portal"
)

// movingClock is a clock the test moves forward.
type movingClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *movingClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *movingClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// onePassword is a pgportal.SignIn for the clock test: alice's one
// password, nothing else.
type onePassword struct{ user, password string }

func (o onePassword) Password(ctx context.Context, a pgportal.Attempt) (pgportal.Account, error) {
	if a.User == o.user && subtle.ConstantTimeCompare([]byte(a.Password), []byte(o.password)) == 1 {
		return pgportal.Account{User: o.user, MFA: "enabled"}, nil
	}
	return pgportal.Account{}, pgportal.ErrRefused
}

func (o onePassword) SecondFactor(ctx context.Context, a pgportal.Attempt, check func(ctx context.Context) (bool, error)) error {
	ok, err := check(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return pgportal.ErrRefused
	}
	return nil
}

// TestPortalSessionTimeouts runs the portal in-process with a clock the
// test moves (serve has no clock to move): a session ends after
// web.session_idle without a request, and after web.session_absolute
// even when it was used all along.
func TestPortalSessionTimeouts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: "sqlite", DSN: filepath.Join(dir, "passgate.db"), KeyFile: filepath.Join(dir, "passgate.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, "alice", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	clock := &movingClock{now: time.Now()}
	srv := httptest.NewUnstartedServer(nil)
	tlsCfg, err := env.certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = tlsCfg
	srv.StartTLS()
	defer srv.Close()
	pub, _ := url.Parse("https://localhost:" + srv.URL[strings.LastIndex(srv.URL, ":")+1:])
	p, err := pgportal.New(pgportal.Options{
		PublicURL:       pub,
		SignIn:          onePassword{"alice", "alice-pw"},
		Accounts:        account.New(account.Options{Store: st, Now: clock.Now}),
		Sessions:        st,
		SessionIdle:     15 * time.Minute,
		SessionAbsolute: time.Hour,
		Now:             clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = p

	signIn := func() *http.Client {
		t.Helper()
		jar, _ := cookiejar.New(nil)
		c := webClient()
		c.Jar = jar
		form := url.Values{"username": {"alice"}, "password": {"alice-pw"}}
		req, _ := http.NewRequest("POST", pub.String()+"/signin", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", pub.String())
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("sign in: %v", err)
		}
		resp.Body.Close()
		if !signedIn(t, c, pub.String()) {
			t.Fatalf("alice is not signed in after POST /signin (%s)", resp.Status)
		}
		return c
	}

	t.Run("idle", func(t *testing.T) {
		c := signIn()
		clock.advance(14 * time.Minute)
		if !signedIn(t, c, pub.String()) {
			t.Fatalf("signed out after 14 min idle, web.session_idle is 15m")
		}
		clock.advance(16 * time.Minute)
		if signedIn(t, c, pub.String()) {
			t.Errorf("still signed in after 16 min idle, web.session_idle is 15m")
		}
	})
	t.Run("absolute", func(t *testing.T) {
		c := signIn()
		for range 5 {
			clock.advance(10 * time.Minute)
			if !signedIn(t, c, pub.String()) {
				t.Fatalf("signed out of a session used every 10 min, before web.session_absolute (1h)")
			}
		}
		clock.advance(11 * time.Minute) // 61 min after sign-in, 11 min idle
		if signedIn(t, c, pub.String()) {
			t.Errorf("still signed in 61 min after sign-in, web.session_absolute is 1h")
		}
	})
}

// signedIn reports whether GET /security-info shows a signed-in page
// (one with Sign out) to the client.
func signedIn(t *testing.T, c *http.Client, base string) bool {
	t.Helper()
	resp, err := c.Get(base + "/security-info")
	if err != nil {
		t.Fatalf("GET /security-info: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode == http.StatusOK && strings.Contains(string(body), "Sign out")
}

// TestPortalReauthentication runs the portal in-process with a moved
// clock, in Chromium: more than 5 minutes after sign-in, adding a method
// and deleting an app password each ask for the password and then the
// second factor ("Verify it's you"); the password alone opens nothing,
// and after both the change goes on where it was asked.
func TestPortalReauthentication(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: "sqlite", DSN: filepath.Join(dir, "passgate.db"), KeyFile: filepath.Join(dir, "passgate.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, "alice", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	clock := &movingClock{now: time.Now()}
	srv := httptest.NewUnstartedServer(nil)
	tlsCfg, err := env.certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = tlsCfg
	srv.StartTLS()
	defer srv.Close()
	pub, _ := url.Parse("https://localhost:" + srv.URL[strings.LastIndex(srv.URL, ":")+1:])
	p, err := pgportal.New(pgportal.Options{
		PublicURL: pub,
		SignIn:    onePassword{"alice", "alice-pw"},
		Accounts:  account.New(account.Options{Store: st, Now: clock.Now}),
		Sessions:  st,
		Now:       clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The admin center beside it, as serve mounts it, for its changes'
	// re-authentication.
	pages, err := pgadmin.New(pgadmin.Options{Ops: account.NewAdmin(account.AdminOptions{Store: st}), Sessions: p, PublicURL: pub, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/admin", pages)
	mux.Handle("/admin/", pages)
	mux.Handle("/", p)
	srv.Config.Handler = mux

	tabCtx, b := tab(t)
	w := &portal{t: t, ctx: tabCtx, b: b, base: pub.String()}
	w.visit("/")
	w.signIn("alice", "alice-pw")
	w.see("heading", "Security info")

	// Register an authenticator app (codes from the test's clock) and an
	// app password, within 5 minutes of sign-in: no re-authentication.
	w.press("Add sign-in method")
	w.choose("Authenticator app")
	w.press("Add")
	secret := normalizeSecret(w.text("", "Secret key"))
	code := func() string {
		t.Helper()
		clock.advance(30 * time.Second) // a new time step: a code is accepted once
		c, err := totp.GenerateCode(secret, clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	w.fill("Code", code())
	w.press("Next")
	w.see("heading", "Recovery codes")
	w.press("Done")
	w.press("Add sign-in method")
	w.choose("App password")
	w.press("Add")
	w.fill("Name", "Outlook 2010")
	w.press("Next")
	w.see("button", "Copy")
	w.press("Done")
	w.see("heading", "Security info")

	// verify walks "Verify it's you": the password, then (checked to be
	// needed) the code.
	verify := func(what string) {
		t.Helper()
		w.see("heading", "Verify your identity")
		if w.has("textbox", "Code") {
			t.Fatalf("%s: a code is asked before the password", what)
		}
		w.fill("Password", "wrong")
		w.press("Next")
		if msg := w.alert(); msg == "" {
			t.Fatalf("%s: a wrong password was not refused", what)
		}
		w.fill("Password", "alice-pw")
		w.press("Next")
		w.see("textbox", "Code")
		// The password alone opens no page that changes anything.
		for _, path := range []string{"/add", "/add/app-password", "/security-info"} {
			w.visit(path)
			if w.has("heading", "Add sign-in method") || w.has("heading", "App password") || w.has("heading", "Security info") {
				t.Fatalf("%s: %s opened after the password alone, without the second factor", what, path)
			}
			w.see("textbox", "Code")
		}
		axeClean(t, w.ctx, "re-authentication, second factor")
		w.fill("Code", code())
		w.press("Verify")
	}

	// Adding a method 6 minutes after sign-in.
	clock.advance(6 * time.Minute)
	w.press("Add sign-in method")
	axeClean(t, w.ctx, "re-authentication, password")
	verify("add a method")
	w.see("heading", "Add sign-in method")

	// Within 5 minutes of that, a change needs nothing more.
	w.visit("/security-info")
	w.press("Delete Outlook 2010")
	w.see("button", "Yes")
	w.press("Cancel")
	w.see("heading", "Security info")

	// Deleting an app password 6 minutes later.
	clock.advance(6 * time.Minute)
	w.press("Delete Outlook 2010")
	verify("delete an app password")
	w.see("button", "Yes")
	if txt := w.page(); !strings.Contains(txt, "Outlook 2010") || !strings.Contains(strings.ToLower(txt), "cannot be undone") {
		t.Errorf("the confirmation after re-authentication does not name the app or say it cannot be undone:\n%s", txt)
	}
	w.press("Yes")
	w.see("heading", "Security info")
	if w.has("link|button", "Delete Outlook 2010") {
		t.Errorf("Outlook 2010 is still listed after re-authentication, Delete → Yes")
	}
	if aps, err := st.ListAppPasswords(ctx, "alice"); err != nil || len(aps) != 0 {
		t.Errorf("app passwords after the delete: %v, %v", aps, err)
	}

	// An admin change 6 minutes after the last verification: the admin
	// center's pages still open, its forms send the admin to verify and
	// back to the page, where the change then goes through.
	if err := st.SetAdmin(ctx, "alice", true); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, "bob", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	clock.advance(6 * time.Minute)
	w.visit("/admin/users/bob")
	w.see("button", "Enforce")
	w.press("Enforce")
	verify("an admin change")
	w.see("button", "Enforce")
	if u, err := st.GetUser(ctx, "bob"); err != nil || u.MFA != store.MFAEnabled {
		t.Fatalf("bob before the admin presses Enforce again: %+v, %v; want enabled (the stale change is not made)", u, err)
	}
	w.press("Enforce")
	w.seeText("now Enforced for bob")
	if u, err := st.GetUser(ctx, "bob"); err != nil || u.MFA != store.MFAEnforced {
		t.Errorf("bob after a verified admin's Enforce: %+v, %v; want enforced", u, err)
	}
}
