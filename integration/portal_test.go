package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/emersion/go-imap/v2"
	"github.com/pquerna/otp/totp"

	"github.com/passgate/passgate/integration/testenv"
)

// The portal tests drive the Security info portal of "passgate serve" in
// Chromium, as its users do: every control is found by its role and its
// visible or accessible name, as ../shared/portal.md words them.

// portal is one tab on a passgate instance's portal.
type portal struct {
	t    *testing.T
	ctx  context.Context
	b    *testenv.Browser
	base string // web.public_url
}

func openPortal(t *testing.T, p *passgateInstance) *portal {
	t.Helper()
	if p.webURL == "" {
		t.Fatal("openPortal: the instance serves no portal (passgateConfig.web)")
	}
	ctx, b := tab(t)
	return &portal{t: t, ctx: ctx, b: b, base: p.webURL}
}

// stepTimeout bounds one wait for a page state, so that a failure still
// has time to show the page; generous, as the tests wait for states.
const stepTimeout = 60 * time.Second

// step returns a context for one step on the tab.
func (w *portal) step() (context.Context, context.CancelFunc) {
	return context.WithTimeout(w.ctx, stepTimeout)
}

// visit loads path (relative to web.public_url) and returns the response.
func (w *portal) visit(path string) *network.Response {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(w.base+path))
	if err != nil {
		w.t.Fatalf("load %s: %v", path, err)
	}
	return resp
}

// fill types value into the field labelled name, replacing what it held.
func (w *portal) fill(name, value string) {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	roles := "textbox|spinbutton|searchbox"
	sel := testenv.ByRole(roles, name)
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible("field "+name, sel),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := testenv.OnElement[bool](roles, name, `function() { this.value = ""; return true }`)(ctx, t)
			return err
		}),
		chromedp.SendKeys("field "+name, value, sel),
	); err != nil {
		w.t.Fatalf("type into the field labelled %q: %v\n%s", name, err, w.dump())
	}
}

// press clicks the button or link named name and waits for the page that
// it loads; it returns that page's response.
func (w *portal) press(name string) *network.Response {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	sel := testenv.ByRole("button|link", name)
	if err := chromedp.Do(ctx, chromedp.WaitVisible("control "+name, sel)); err != nil {
		w.t.Fatalf("no button or link %q: %v\n%s", name, err, w.dump())
	}
	resp, err := chromedp.RunResponse(ctx, chromedp.Click("control "+name, sel, chromedp.NodeVisible))
	if err != nil {
		w.t.Fatalf("press %q: %v", name, err)
	}
	return resp
}

// click clicks a control (button, link, radio button, checkbox, option,
// summary) named name without waiting for a page.
func (w *portal) click(name string) {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	sel := testenv.ByRole("button|link|radio|checkbox|option|menuitem|DisclosureTriangle", name)
	if err := chromedp.Do(ctx, chromedp.Click("control "+name, sel, chromedp.NodeVisible)); err != nil {
		w.t.Fatalf("click %q: %v\n%s", name, err, w.dump())
	}
}

// choose picks the method named name in the list of sign-in methods: a
// radio button or option is selected, a link or button followed.
func (w *portal) choose(name string) {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	roles := "radio|option|link|button|menuitem"
	// Ready, not visible: the options of a closed select have no box.
	if err := chromedp.Do(ctx, chromedp.WaitReady("method "+name, testenv.ByRole(roles, name))); err != nil {
		w.t.Fatalf("no sign-in method %q to choose: %v\n%s", name, err, w.dump())
	}
	found, err := chromedp.Run(ctx, chromedp.QueryAfter(chromedp.CSS("html"),
		func(ctx context.Context, t *chromedp.Target, nodes []*chromedp.Node) ([]testenv.Control, error) {
			return testenv.FindControls(ctx, t, nodes[0].NodeID, roles, name)
		}))
	if err != nil || len(found) == 0 {
		w.t.Fatalf("sign-in method %q: %v", name, err)
	}
	switch found[0].Role {
	case "radio":
		w.click(name)
	case "option", "MenuListOption":
		if _, err := chromedp.Run(ctx, testenv.OnElement[bool]("option|MenuListOption", name,
			`function() { const s = this.closest("select"); s.value = this.value; s.dispatchEvent(new Event("change", {bubbles: true})); return true }`)); err != nil {
			w.t.Fatalf("select %q: %v", name, err)
		}
	default:
		w.press(name)
	}
}

// see waits until an element with one of roles and the name is visible.
func (w *portal) see(roles, name string) {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(roles+" "+name, testenv.ByRole(roles, name))); err != nil {
		w.t.Fatalf("no %s %q on the page: %v\n%s", roles, name, err, w.dump())
	}
}

// seeText waits until the page's visible text holds s.
func (w *portal) seeText(s string) {
	w.t.Helper()
	for {
		txt, err := chromedp.Run(w.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		if err == nil && strings.Contains(txt, s) {
			return
		}
		select {
		case <-w.ctx.Done():
			w.t.Fatalf("the page never shows %q: %v\n%s", s, w.ctx.Err(), txt)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// has reports whether an element with one of roles and the name is on
// the page now, without waiting.
func (w *portal) has(roles, name string) bool {
	w.t.Helper()
	ids, err := chromedp.Run(w.ctx, chromedp.QueryAfter(chromedp.CSS("html"),
		func(ctx context.Context, t *chromedp.Target, nodes []*chromedp.Node) ([]testenv.Control, error) {
			return testenv.FindControls(ctx, t, nodes[0].NodeID, roles, name)
		}))
	if err != nil {
		w.t.Fatalf("look for %s %q: %v", roles, name, err)
	}
	return len(ids) > 0
}

// checked reports whether the radio button or checkbox named name is
// checked, waiting until it is on the page.
func (w *portal) checked(name string) bool {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	on, err := chromedp.Run(ctx, testenv.OnElement[bool]("radio|checkbox", name, `function() { return this.checked }`))
	if err != nil {
		w.t.Fatalf("read the control %q: %v\n%s", name, err, w.dump())
	}
	return on
}

// text returns the text (or the value, for a field) of the element with
// one of roles and the accessible name.
func (w *portal) text(roles, name string) string {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	s, err := chromedp.Run(ctx, testenv.OnElement[string](roles, name,
		`function() { return ("value" in this && this.value ? this.value : this.innerText).trim() }`))
	if err != nil {
		w.t.Fatalf("read the element labelled %q: %v\n%s", name, err, w.dump())
	}
	return s
}

// alert waits for the element with role alert and returns its text.
func (w *portal) alert() string {
	w.t.Helper()
	ctx, cancel := w.step()
	defer cancel()
	s, err := chromedp.Run(ctx, testenv.OnElement[string]("alert", "", `function() { return this.innerText.trim() }`))
	if err != nil {
		w.t.Fatalf("no message with role alert on the page: %v\n%s", err, w.dump())
	}
	return s
}

// page returns the visible text of the page.
func (w *portal) page() string {
	w.t.Helper()
	s, err := chromedp.Run(w.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		w.t.Fatalf("read the page: %v", err)
	}
	return s
}

// dump returns the page's address and text, for failure messages.
func (w *portal) dump() string {
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + (document.body ? document.body.innerText : "")`))
	return "page: " + s
}

// cookies returns the browser's cookies for the portal.
func (w *portal) cookies() []*network.Cookie {
	w.t.Helper()
	res, err := chromedp.Call(w.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{w.base + "/"}})
	if err != nil {
		w.t.Fatalf("read cookies: %v", err)
	}
	return res.Cookies
}

// session returns the portal's session cookie ("__Host-" prefix), nil
// when there is none.
func (w *portal) session() *network.Cookie {
	w.t.Helper()
	for _, c := range w.cookies() {
		if strings.HasPrefix(c.Name, "__Host-") {
			return c
		}
	}
	return nil
}

// signIn fills and sends the first step of the sign-in page.
func (w *portal) signIn(user, password string) {
	w.t.Helper()
	w.fill("User name", user)
	w.fill("Password", password)
	w.press("Sign in")
}

// authenticator computes the codes of a TOTP secret, never reusing a time
// step, as an authenticator app would across sign-ins.
type authenticator struct {
	secret string
	last   int64 // last time step used
}

// code returns a code for the current time step, or for the next one
// when the current one was used already (accepted with one step of skew,
// as every authenticator app's clock may be ahead).
func (a *authenticator) code(t *testing.T) string {
	t.Helper()
	step := time.Now().Unix() / 30
	if step <= a.last {
		step = a.last + 1
	}
	a.last = step
	c, err := totp.GenerateCode(a.secret, time.Unix(step*30, 0))
	if err != nil {
		t.Fatalf("TOTP code from the secret key: %v", err)
	}
	return c
}

// normalizeSecret turns the secret as shown (groups, maybe lower case)
// into base32 as an authenticator app reads it.
func normalizeSecret(s string) string {
	return strings.ToUpper(strings.Join(strings.Fields(s), ""))
}

// webClient is a Go HTTP client that trusts the test CA and resolves
// localhost to 127.0.0.1; it follows no redirect.
func webClient() *http.Client {
	tlsCfg := env.certs.ClientTLS()
	tlsCfg.ServerName = "localhost"
	return &http.Client{
		Transport:     &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       patience,
	}
}

// TestPortalFlow walks the whole portal against the real Dovecot: alice
// (MFA enabled by an admin with the command line) signs in with her
// Dovecot password (web.verify imap), registers an authenticator app and
// sees her recovery codes, creates the app password "Outlook 2010",
// logs in over IMAP with it, creates "Office scanner" allowed only from
// some networks (a malformed one refused first), which logs in from
// inside them and gets the uniform failure from elsewhere, deletes
// "Outlook 2010" after confirming, and the next IMAP login fails; she
// registers a passkey with Chromium's virtual authenticator and signs in
// with it. Along the way: the session cookie's attributes, a new session
// id at each sign-in, a TOTP code refused the second time, axe-core on
// every page, screenshots of Security info and of the refused network,
// and no secret in passgate's log.
func TestPortalFlow(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{web: true, failureDelay: "200ms"})
	p.admin(t, "user", "add", "alice", "--mfa", "enabled")
	primary := d.Users["alice"]
	secrets := map[string]string{"primary password": primary}

	w := openPortal(t, p)
	w.visit("/")
	w.see("textbox", "User name")
	w.see("button", "Sign in")
	axeClean(t, w.ctx, "sign-in")
	if c := w.session(); c != nil {
		// A session before sign-in is allowed (to carry the first
		// step); it must change at sign-in.
		secrets["pre-sign-in session id"] = c.Value
	}
	before := w.session()

	// Sign in with the primary password: alice (enabled) is taken to
	// register a second factor.
	w.signIn("alice", primary)
	w.see("heading", "Security info")
	checkCookie(t, w.session(), before)
	cookieName := w.session().Name
	firstSession := w.session().Value
	secrets["session id"] = firstSession
	axeClean(t, w.ctx, "Security info (registration)")

	// Passkey, with Chromium's virtual authenticator.
	authID, err := testenv.VirtualAuthenticator(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.press("Add sign-in method")
	w.choose("Passkey")
	w.press("Add")
	w.fill("Name", "Test laptop")
	w.press("Next") // the ceremony, then the page that says it is done
	w.see("heading", "Security info")
	w.seeText("Test laptop")
	if out := p.admin(t, "user", "list"); !strings.Contains(out, "enforced") {
		t.Errorf("registering a passkey did not move alice to enforced:\n%s", out)
	}
	if creds, err := testenv.AuthenticatorCredentials(w.ctx, authID); err != nil || len(creds) != 1 {
		t.Fatalf("the virtual authenticator holds %d credentials (%v), want 1", len(creds), err)
	} else if creds[0].RpID != "localhost" {
		t.Errorf("the passkey's relying party is %q, want localhost (the host of web.public_url)", creds[0].RpID)
	}

	// App password "Outlook 2010".
	w.press("Add sign-in method")
	w.choose("App password")
	w.press("Add")
	w.fill("Name", "Outlook 2010")
	w.see("", "Advanced")
	axeClean(t, w.ctx, "app password name")
	w.press("Next")
	shown := w.text("", "Password")
	appPW := strings.Join(strings.Fields(shown), "")
	if len(strings.Fields(shown)) != 4 || len(appPW) != 16 {
		t.Errorf("the new app password %q is not four groups of four letters", shown)
	}
	secrets["app password"] = appPW
	secrets["app password as shown"] = shown
	w.see("button", "Copy")
	if txt := strings.ToLower(w.page()); !strings.Contains(txt, "not be shown again") && !strings.Contains(txt, "won't be shown again") {
		t.Errorf("no warning that the password will not be shown again:\n%s", w.page())
	}
	axeClean(t, w.ctx, "new app password")
	w.press("Done")
	w.see("heading", "Security info")
	w.seeText("Outlook 2010")

	// The app password opens IMAP through passgate; the client names
	// itself with ID first, as Outlook and Thunderbird do.
	c := p.dial(t, true, "", nil)
	if _, err := c.ID(&imap.IDData{Name: "Outlook", Version: "14.0"}).Wait(); err != nil {
		t.Fatalf("IMAP ID before LOGIN: %v", err)
	}
	if err := c.Login("alice", shown).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN with the app password from the portal: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	c.Logout().Wait()

	// App password "Office scanner", allowed only from some networks
	// (Advanced → Allowed networks): a malformed network is refused with
	// a message and the form kept; then it logs in from inside them and
	// gets the uniform failure from elsewhere, as one made with
	// app-password create --networks (TestIMAPAppPasswordNetworks).
	w.press("Add sign-in method")
	w.choose("App password")
	w.press("Add")
	w.fill("Name", "Office scanner")
	w.click("Advanced")
	w.fill("Allowed networks", "127.0.0.40/33")
	w.press("Next")
	if msg := w.alert(); !strings.Contains(msg, `"127.0.0.40/33" is not an address or a network`) {
		t.Errorf("a malformed network gets %q, want a message that names it", msg)
	}
	if got := w.text("textbox", "Name"); got != "Office scanner" {
		t.Errorf("the refused form lost its name: %q", got)
	}
	axeClean(t, w.ctx, "app password with a malformed network")
	screens(t, w, "app-password-networks-refused")
	w.fill("Allowed networks", "127.0.0.40/30, 2001:db8::1")
	w.press("Next")
	scanner := w.text("", "Password")
	secrets["app password with networks"] = scanner
	w.seeText("usable only from 127.0.0.40/30, 2001:db8::1/128")
	w.press("Done")
	w.see("heading", "Security info")
	w.seeText("Only from 127.0.0.40/30, 2001:db8::1/128")
	uniform := "a " + uniformFailure + "\r\n"
	if got := p.rawLoginFrom(t, "127.0.0.41", "alice", scanner); !strings.HasPrefix(got, "a OK") {
		t.Errorf("IMAP LOGIN with the portal's app password from inside its networks: %q", got)
	}
	for _, from := range []string{"127.0.0.44", "127.0.0.1"} {
		if got := p.rawLoginFrom(t, from, "alice", scanner); got != uniform {
			t.Errorf("IMAP LOGIN with the portal's app password from %s, outside its networks: %q, want the uniform failure", from, got)
		}
	}
	var audit string
	if !eventually(patience, func() bool {
		audit = p.admin(t, "audit", "--user", "alice")
		return strings.Contains(audit, "is not allowed from 127.0.0.44 (its networks: 127.0.0.40/30,2001:db8::1/128)")
	}) {
		t.Errorf("the audit trail does not say why the app password was refused:\n%s", audit)
	}

	// Security info: axe-core and the screenshots (after a reload, so
	// that the last use of the app password shows).
	w.visit("/")
	w.see("heading", "Security info")
	w.seeText("Outlook 2010")
	// Its last use: time, address without the port, protocol, client
	// name; the sessions in a short form with their address.
	w.seeText("from 127.0.0.1 over IMAP by Outlook 14.0")
	w.seeText("Only from 127.0.0.40/30, 2001:db8::1/128")
	w.seeText("Chrome on Linux")
	if txt := w.page(); !strings.Contains(txt, "Signed in ") || !strings.Contains(txt, " from 127.0.0.1;") || strings.Contains(txt, "Mozilla/") {
		t.Errorf("the sessions list does not show browser, address and start time in short:\n%s", txt)
	}
	axeClean(t, w.ctx, "Security info")
	for _, s := range []struct {
		name string
		win  testenv.Window
	}{{"security-info-desktop", testenv.Desktop}, {"security-info-phone", testenv.Phone}} {
		if err := chromedp.Do(w.ctx, testenv.SetWindow(s.win)); err != nil {
			t.Fatal(err)
		}
		axeClean(t, w.ctx, "Security info at "+s.name)
		shot(t, w.ctx, w.b, s.name)
		if wide, err := chromedp.Run(w.ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`)); err != nil || wide {
			t.Errorf("Security info at %dpx scrolls sideways (%v)", s.win.Width, err)
		}
	}
	if err := chromedp.Do(w.ctx, testenv.SetWindow(testenv.Desktop)); err != nil {
		t.Fatal(err)
	}

	// Delete "Outlook 2010" after confirming; IMAP refuses it next.
	w.press("Delete Outlook 2010")
	confirm := w.page()
	if !strings.Contains(confirm, "Outlook 2010") || !strings.Contains(strings.ToLower(confirm), "cannot be undone") {
		t.Errorf("the confirmation does not name the app or say it cannot be undone:\n%s", confirm)
	}
	w.see("button", "Cancel")
	w.press("Yes")
	w.see("heading", "Security info")
	if w.has("link|button", "Delete Outlook 2010") {
		t.Errorf("Outlook 2010 is still listed after Delete → Yes")
	}
	if got := p.rawLogin(t, "alice", shown); got != "a "+uniformFailure+"\r\n" {
		t.Errorf("IMAP LOGIN with the deleted app password: %q, want the uniform failure", got)
	}

	// Authenticator app.
	w.press("Add sign-in method")
	w.choose("Authenticator app")
	w.press("Add")
	w.see("", "QR code")
	secretText := w.text("", "Secret key")
	secret := normalizeSecret(secretText)
	if len(secret) < 16 || strings.Trim(secret, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567=") != "" {
		t.Fatalf("the Secret key %q is not upper-case base32", secretText)
	}
	secrets["TOTP secret"] = secret
	axeClean(t, w.ctx, "authenticator app registration")
	auth := &authenticator{secret: secret}
	w.fill("Code", auth.code(t))
	w.press("Next")

	// Recovery codes, shown once.
	w.see("heading", "Recovery codes")
	codes, err := chromedp.Run(w.ctx, testenv.OnElement[[]string]("list", "Recovery codes",
		`function() { return Array.from(this.querySelectorAll("li")).map(li => li.innerText.trim()) }`))
	if err != nil {
		t.Fatalf("read the list labelled Recovery codes: %v\n%s", err, w.dump())
	}
	if len(codes) != 10 {
		t.Errorf("%d recovery codes, want 10: %q", len(codes), codes)
	}
	for i, c := range codes {
		if c == "" {
			t.Errorf("recovery code %d is empty", i)
		}
		secrets[fmt.Sprintf("recovery code %d", i)] = c
	}
	axeClean(t, w.ctx, "recovery codes")
	w.press("Done")
	w.see("heading", "Security info")
	w.seeText("Authenticator app")

	// Sign out ends the session; a sign-in with the password and the
	// passkey gets a new session id.
	w.press("Sign out")
	w.see("textbox", "User name")
	if c := w.session(); c != nil && c.Value == firstSession {
		t.Errorf("the session cookie survived Sign out")
	}
	if replay(t, cookieName, firstSession, p.webURL) {
		t.Errorf("the signed-out session id still opens Security info")
	}
	// A session id planted before sign-in (fixation) is not kept.
	planted := &network.Cookie{Name: cookieName, Value: "planted-by-an-attacker-0123456789abcdef"}
	yes := true
	if _, err := chromedp.Call(w.ctx, network.SetCookie, network.SetCookieParams{
		Name: planted.Name, Value: planted.Value, URL: p.webURL + "/", Path: "/", Secure: &yes, HTTPOnly: &yes,
		SameSite: network.CookieSameSiteStrict,
	}); err != nil {
		t.Fatalf("plant a session cookie: %v", err)
	}
	w.signIn("alice", primary)
	w.see("button", "Use a passkey")
	w.see("textbox", "Code")
	axeClean(t, w.ctx, "second step of sign-in")
	w.press("Use a passkey")
	w.see("heading", "Security info")
	passkeySession := w.session()
	checkCookie(t, passkeySession, planted)
	if passkeySession.Value == firstSession {
		t.Errorf("the session id did not change at the passkey sign-in")
	}
	secrets["passkey session id"] = passkeySession.Value

	// A TOTP code is accepted once.
	w.press("Sign out")
	w.see("textbox", "User name")
	w.signIn("alice", primary)
	code := auth.code(t)
	w.fill("Code", code)
	w.press("Verify")
	w.see("heading", "Security info")
	secrets["code session id"] = w.session().Value
	// A code is accepted once: used again at the next sign-in, while it
	// is still valid, it is refused. A busy machine may take longer for
	// the sign-out and sign-in than the code has left (30 to 60 s): then
	// the refusal shows nothing, and the round is repeated with a fresh
	// code (the browser test's own deadline bounds the rounds).
	var msg string
	for round := 1; ; round++ {
		w.press("Sign out")
		w.see("textbox", "User name")
		w.signIn("alice", primary)
		w.fill("Code", code)
		w.press("Verify")
		msg = w.alert()
		if w.has("heading", "Security info") {
			t.Fatalf("a TOTP code was accepted twice")
		}
		if ok, _ := totp.ValidateCustom(code, secret, time.Now(), totpOpts); ok {
			break // still valid once refused: refused for its reuse
		}
		t.Logf("round %d: the code expired before its reuse was refused (a busy machine); again with a fresh code", round)
		code = auth.code(t)
		w.fill("Code", code)
		w.press("Verify")
		w.see("heading", "Security info")
	}
	// A recovery code signs in instead, once.
	w.fill("Code", codes[0])
	w.press("Verify")
	w.see("heading", "Security info")
	w.press("Sign out")
	w.see("textbox", "User name")
	w.signIn("alice", primary)
	w.fill("Code", codes[0])
	w.press("Verify")
	if got := w.alert(); got != msg {
		t.Errorf("a used recovery code: %q, want the one failure message %q", got, msg)
	}

	// A wrong password: the same message, after the failure delay, and
	// no session cookie.
	fresh := openPortal(t, p)
	fresh.visit("/")
	fresh.see("textbox", "User name")
	cookieBefore := fresh.session()
	start := time.Now()
	fresh.signIn("alice", "not-her-password")
	if got := fresh.alert(); got != msg {
		t.Errorf("wrong password: %q, want the one failure message %q", got, msg)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("a failed sign-in answered after %v, before policy.failure_delay (200ms)", took)
	}
	if after := fresh.session(); after != nil && (cookieBefore == nil || after.Value != cookieBefore.Value) {
		t.Errorf("a failed sign-in set a session cookie (%s)", after.Name)
	}

	// No secret in passgate's log.
	logs := p.out.String()
	for what, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("passgate's log holds the %s", what)
		}
	}
	for _, c := range w.cookies() {
		if c.Value != "" && strings.Contains(logs, c.Value) {
			t.Errorf("passgate's log holds the cookie %s", c.Name)
		}
	}
}

// totpOpts are the parameters every authenticator app uses.
var totpOpts = totp.ValidateOpts{Period: 30, Skew: 1, Digits: 6}

// screens takes screenshots of the tab's page at desktop and phone
// width (name-desktop.png, name-phone.png), checks that neither scrolls
// sideways, and leaves the tab at desktop width.
func screens(t *testing.T, w *portal, name string) {
	t.Helper()
	for _, s := range []struct {
		suffix string
		win    testenv.Window
	}{{"desktop", testenv.Desktop}, {"phone", testenv.Phone}} {
		if err := chromedp.Do(w.ctx, testenv.SetWindow(s.win)); err != nil {
			t.Fatal(err)
		}
		shot(t, w.ctx, w.b, name+"-"+s.suffix)
		if wide, err := chromedp.Run(w.ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`)); err != nil || wide {
			t.Errorf("%s at %dpx scrolls sideways (%v)", name, s.win.Width, err)
		}
	}
	if err := chromedp.Do(w.ctx, testenv.SetWindow(testenv.Desktop)); err != nil {
		t.Fatal(err)
	}
}

// checkCookie checks the session cookie's attributes after a sign-in, and
// that its value differs from the one before (nil: none).
func checkCookie(t *testing.T, c, before *network.Cookie) {
	t.Helper()
	if c == nil {
		t.Fatalf("no __Host- session cookie after sign-in")
	}
	if !c.HTTPOnly || !c.Secure || c.SameSite != network.CookieSameSiteStrict || c.Path != "/" {
		t.Errorf("session cookie %s: HttpOnly=%v Secure=%v SameSite=%q Path=%q; want HttpOnly, Secure, SameSite=Strict, Path=/",
			c.Name, c.HTTPOnly, c.Secure, c.SameSite, c.Path)
	}
	if before != nil && before.Value == c.Value {
		t.Errorf("the session id did not change at sign-in")
	}
}

// replay sends GET / with the session cookie name=value from Go's
// client and reports whether it opens a signed-in page (one that offers
// Sign out).
func replay(t *testing.T, name, value, base string) bool {
	t.Helper()
	req, err := http.NewRequest("GET", base+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: name, Value: value})
	resp, err := webClient().Do(req)
	if err != nil {
		t.Fatalf("GET / with a session cookie: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET / with a session cookie: %v", err)
	}
	return resp.StatusCode == http.StatusOK && strings.Contains(string(body), "Sign out")
}

// TestPortalCrossOrigin checks that a state-changing request from another
// origin gets 403 Forbidden: from Go's client with a foreign Origin, and
// from a page of another site that posts a form to the portal in the
// browser.
func TestPortalCrossOrigin(t *testing.T) {
	p := startPassgate(t, passgateConfig{web: true, failureDelay: "200ms"})
	p.admin(t, "user", "add", "alice", "--mfa", "enabled")
	w := openPortal(t, p)
	w.visit("/")
	w.see("textbox", "User name")
	action, err := chromedp.Run(w.ctx, testenv.OnElement[string]("button", "Sign in", `function() { return this.form.action }`))
	if err != nil {
		t.Fatalf("the sign-in form's action: %v", err)
	}
	form := url.Values{"username": {"alice"}, "password": {"x"}}

	for _, tc := range []struct {
		name   string
		header map[string]string
		want   func(int) bool
	}{
		{"foreign-origin", map[string]string{"Origin": "https://evil.example"}, func(c int) bool { return c == http.StatusForbidden }},
		{"cross-site-fetch", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, func(c int) bool { return c == http.StatusForbidden }},
		{"same-origin", map[string]string{"Origin": p.webURL, "Sec-Fetch-Site": "same-origin"}, func(c int) bool { return c != http.StatusForbidden }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("POST", action, strings.NewReader(form.Encode()))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := webClient().Do(req)
			if err != nil {
				t.Fatalf("POST %s: %v", action, err)
			}
			resp.Body.Close()
			if !tc.want(resp.StatusCode) {
				t.Errorf("POST %s with %v: %s", action, tc.header, resp.Status)
			}
		})
	}

	// In the browser: a page on another origin (https://127.0.0.1:port,
	// not localhost) posts a form to the portal.
	evil := http.NewServeMux()
	evil.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(rw, `<!doctype html><html lang="en"><title>Other site</title><body>
<form id="f" method="post" action="%s"><input name="username" value="alice"><input name="password" value="x"></form>
<script>document.getElementById("f").submit()</script></body></html>`, action)
	})
	srv := newTLSServer(t, evil)
	if err := chromedp.Do(w.ctx, chromedp.Navigate(srv)); err != nil {
		t.Fatalf("load the other site: %v", err)
	}
	var status int64
	if !eventually(patience, func() bool {
		s, err := chromedp.Run(w.ctx, chromedp.Evaluate[string](`location.href`))
		if err != nil || !strings.HasPrefix(s, p.webURL) {
			return false
		}
		entries, err := chromedp.Run(w.ctx, chromedp.Evaluate[int64](`performance.getEntriesByType("navigation")[0].responseStatus || 0`))
		status = entries
		return err == nil && entries != 0
	}) {
		t.Fatalf("the other site's form did not reach the portal")
	}
	if status != http.StatusForbidden {
		t.Errorf("a form posted from another site got %d, want 403", status)
	}
}

// newTLSServer serves h over HTTPS with the test certificate on
// 127.0.0.1 and returns its address as https://127.0.0.1:port (another
// origin than the portal's https://localhost:port).
func newTLSServer(t *testing.T, h http.Handler) string {
	t.Helper()
	cfg, err := env.certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: patience}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return fmt.Sprintf("https://127.0.0.1:%d/", port)
}

// TestPortalLockout checks that a locked-out source gets the same message
// as a wrong password, with the right password, after the failure delay,
// and no session.
func TestPortalLockout(t *testing.T) {
	p := startPassgate(t, passgateConfig{web: true, failureDelay: "200ms",
		policyYAML: "  lockout:\n    max_failures: 3\n    window: 5m\n    duration: 5m\n"})
	p.admin(t, "user", "add", "bob", "--mfa", "enabled")
	w := openPortal(t, p)
	w.visit("/")
	var msg string
	for i := range 3 {
		w.signIn("bob", fmt.Sprintf("wrong-%d", i))
		got := w.alert()
		if i == 0 {
			msg = got
		} else if got != msg {
			t.Errorf("failure %d: %q, want the one failure message %q", i+1, got, msg)
		}
	}
	start := time.Now()
	w.signIn("bob", env.dovecot.Users["bob"])
	if got := w.alert(); got != msg {
		t.Errorf("right password from a locked-out source: %q, want the one failure message %q", got, msg)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("the locked-out sign-in answered after %v, before policy.failure_delay (200ms)", took)
	}
	if w.has("heading", "Security info") {
		t.Errorf("a locked-out source signed in")
	}
	var out string
	if !eventually(patience, func() bool {
		out = p.admin(t, "audit", "--user", "bob")
		return strings.Contains(out, "locked out") && strings.Contains(out, "web")
	}) {
		t.Errorf("the audit trail does not show the web sign-in refused as locked out:\n%s", out)
	}
	if strings.Contains(p.out.String(), env.dovecot.Users["bob"]) {
		t.Errorf("passgate's log holds bob's password")
	}
}

// TestPortalCertificateReload runs the binary with the portal alone
// (web.listen, no protocol listener): the portal serves HTTPS with
// tls.cert_file, and after the files are replaced, SIGHUP makes it
// present the new certificate without a restart.
func TestPortalCertificateReload(t *testing.T) {
	bin := passgateBinary(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	install := func(c *testenv.Certs) {
		t.Helper()
		for src, dst := range map[string]string{c.CertFile: certFile, c.KeyFile: keyFile} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(dst+".new", dst); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(env.certs)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := filepath.Join(dir, "passgate.yaml")
	yaml := fmt.Sprintf("store:\n  dsn: %q\nkey_file: %q\ntls:\n  cert_file: %q\n  key_file: %q\nweb:\n  listen: %s\n  verify: store\n",
		filepath.Join(dir, "passgate.db"), filepath.Join(dir, "passgate.key"), certFile, keyFile, addr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfg)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(patience); !dialable(addr); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("passgate serve with only web.listen does not listen:\n%s", out.String())
		}
	}
	// presented returns the certificate the portal presents to a client
	// that trusts c, and the status of GET /signin.
	presented := func(c *testenv.Certs) ([]byte, int) {
		t.Helper()
		tc := c.ClientTLS()
		tc.ServerName = "localhost"
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: patience}
		resp, err := client.Get("https://" + addr + "/signin")
		if err != nil {
			t.Fatalf("GET /signin over HTTPS: %v\n%s", err, out.String())
		}
		defer resp.Body.Close()
		if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			t.Fatal("no TLS on the portal")
		}
		if resp.Header.Get("Strict-Transport-Security") == "" {
			t.Error("no HSTS header over HTTPS")
		}
		return resp.TLS.PeerCertificates[0].Raw, resp.StatusCode
	}
	first, status := presented(env.certs)
	if status != http.StatusOK {
		t.Fatalf("GET /signin = %d", status)
	}

	next, err := testenv.NewCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	install(next)
	cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(patience); !strings.Contains(out.String(), "certificate reloaded"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP:\n%s", out.String())
		}
	}
	second, status := presented(next)
	if status != http.StatusOK || bytes.Equal(first, second) {
		t.Errorf("after SIGHUP: GET /signin = %d, new certificate presented: %v", status, !bytes.Equal(first, second))
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("serve after SIGTERM: %v\n%s", err, out.String())
	}
}
