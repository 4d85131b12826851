package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/dom"
	"github.com/chromedp/chromedp"

	"github.com/passgate/passgate/integration/testenv"
)

// registerPasskey signs user in on w and registers a passkey with a
// virtual authenticator, then signs out and in again with the passkey:
// a full session past the second step.
func registerPasskey(t *testing.T, w *portal, user, password string) {
	t.Helper()
	if _, err := testenv.VirtualAuthenticator(w.ctx); err != nil {
		t.Fatal(err)
	}
	w.visit("/")
	w.signIn(user, password)
	w.see("heading", "Security info")
	w.press("Add sign-in method")
	w.choose("Passkey")
	w.press("Add")
	w.fill("Name", "Laptop of "+user)
	w.press("Next")
	w.see("heading", "Security info")
	w.press("Sign out")
	w.see("textbox", "User name")
	w.signIn(user, password)
	w.press("Use a passkey")
	w.see("heading", "Security info")
}

// adminShot takes the screenshots of an admin page at desktop and phone
// widths, with axe-core and checkLayout on both.
func adminShot(t *testing.T, w *portal, name string) {
	t.Helper()
	for _, s := range []struct {
		suffix string
		win    testenv.Window
	}{{"desktop", testenv.Desktop}, {"phone", testenv.Phone}} {
		if err := chromedp.Do(w.ctx, testenv.SetWindow(s.win)); err != nil {
			t.Fatal(err)
		}
		axeClean(t, w.ctx, name+" at "+s.suffix)
		shot(t, w.ctx, w.b, name+"-"+s.suffix)
		checkLayout(t, w, fmt.Sprintf("%s at %dpx", name, s.win.Width), s.win.Mobile)
	}
	if err := chromedp.Do(w.ctx, testenv.SetWindow(testenv.Desktop)); err != nil {
		t.Fatal(err)
	}
}

// layoutReport is what layoutJS finds on a page.
type layoutReport struct {
	Wide    bool     // the page scrolls sideways
	Scrolls []string // the tables' regions that scroll sideways
	Broken  []string // the dates and times broken over lines
	Headers []string // the tables' column headers
}

// layoutJS measures the page as laid out: whether the page or a table's
// scrolling region is wider than the window, and whether a date and time
// as the pages write it (2026-12-07 04:30 UTC) is broken over lines,
// wherever it is, whatever its markup.
const layoutJS = `(() => {
	const r = {wide: document.documentElement.scrollWidth > window.innerWidth, scrolls: [], broken: [], headers: []};
	for (const el of document.querySelectorAll("main .scroll")) {
		if (el.scrollWidth > el.clientWidth) {
			r.scrolls.push(JSON.stringify(el.getAttribute("aria-label")) + ": " + el.scrollWidth + "px in " + el.clientWidth + "px");
		}
	}
	const stamp = /\d{4}-\d\d-\d\d \d\d:\d\d UTC/g;
	const walk = document.createTreeWalker(document.querySelector("main"), NodeFilter.SHOW_TEXT);
	for (let n; (n = walk.nextNode());) {
		for (const m of n.data.matchAll(stamp)) {
			const range = document.createRange();
			range.setStart(n, m.index);
			range.setEnd(n, m.index + m[0].length);
			const lines = new Set(Array.from(range.getClientRects(), b => Math.round(b.top))).size;
			if (lines !== 1) {
				r.broken.push(JSON.stringify(m[0]) + " on " + lines + " lines");
			}
		}
	}
	for (const th of document.querySelectorAll("main thead th")) {
		r.headers.push(th.textContent.trim());
	}
	return r;
})()`

// checkLayout fails the test if the page that w shows scrolls sideways, if a
// table in it scrolls sideways in its own region, or if a table's column
// headers are no longer column headers to assistive technology (the
// phone layout changes the tables' display); on a phone, also if a date
// and time is broken over lines. (On a desktop the Audit page's Time
// column shows the date over the time, as it always has.)
func checkLayout(t *testing.T, w *portal, what string, phone bool) {
	t.Helper()
	r, err := chromedp.Run(w.ctx, chromedp.Evaluate[layoutReport](layoutJS))
	if err != nil {
		t.Fatalf("measure %s: %v", what, err)
	}
	if r.Wide {
		t.Errorf("%s scrolls sideways", what)
	}
	for _, s := range r.Scrolls {
		t.Errorf("%s: the table region %s scrolls sideways", what, s)
	}
	if phone {
		for _, b := range r.Broken {
			t.Errorf("%s: the date and time %s", what, b)
		}
	}
	for _, h := range r.Headers {
		if !w.has("columnheader", h) {
			t.Errorf("%s: the header %q is no column header in the accessibility tree", what, h)
		}
	}
	if phone {
		cells, err := chromedp.Run(w.ctx, labelledCells())
		if err != nil {
			t.Fatalf("read the accessible names of %s: %v", what, err)
		}
		for _, c := range cells {
			if c.name == "" || strings.HasPrefix(c.name, c.label) {
				t.Errorf("%s: the cell under %q is named %q: the label shown before it must not be read out (the column header is)", what, c.label, c.name)
			}
		}
	}
}

// labelledCell is a table cell with the label that the phone layout
// shows before it, and its accessible name.
type labelledCell struct{ label, name string }

// labelledCells reads the cells of the first row of each table in main
// that have a data-label, with their accessible names.
func labelledCells() chromedp.Action[[]labelledCell] {
	return chromedp.QueryAfter(chromedp.CSS("html"), func(ctx context.Context, t *chromedp.Target, nodes []*chromedp.Node) ([]labelledCell, error) {
		found, err := cdp.Call(ctx, t, dom.QuerySelectorAll, dom.QuerySelectorAllParams{NodeID: nodes[0].NodeID, Selector: "main tbody tr:first-child td[data-label]"})
		if err != nil {
			return nil, err
		}
		var cells []labelledCell
		no := false
		for _, id := range found.NodeIDs {
			attrs, err := cdp.Call(ctx, t, dom.GetAttributes, dom.GetAttributesParams{NodeID: id})
			if err != nil {
				return nil, err
			}
			var c labelledCell
			for i := 0; i+1 < len(attrs.Attributes); i += 2 {
				if attrs.Attributes[i] == "data-label" {
					c.label = attrs.Attributes[i+1]
				}
			}
			ax, err := cdp.Call(ctx, t, accessibility.GetPartialAXTree, accessibility.GetPartialAXTreeParams{NodeID: id, FetchRelatives: &no})
			if err != nil {
				return nil, err
			}
			if len(ax.Nodes) > 0 && ax.Nodes[0].Name != nil {
				if err := json.Unmarshal(ax.Nodes[0].Name.Value, &c.name); err != nil {
					return nil, fmt.Errorf("the accessible name %s: %w", ax.Nodes[0].Name.Value, err)
				}
			}
			cells = append(cells, c)
		}
		return cells, nil
	})
}

// The two choices of the admin center's switch for app passwords, in
// Microsoft's words (portal.md).
const (
	allowAppPasswords  = "Allow users to create app passwords to sign in to non-browser apps"
	forbidAppPasswords = "Do not allow users to create app passwords to sign in to non-browser apps"
)

// TestAdminFlow walks the admin center in Chromium against the real
// Dovecot: dave (admin) signs in with a passkey, searches for bob, ticks
// bob and carol and chooses Enable, then Enforce for bob; bob's primary
// password is refused over IMAP while carol's works and shows on the
// Rollout page; dave revokes alice's app passwords (a confirmation page
// names them, then Yes) and her live IMAP session is closed; dave forbids
// app passwords and alice's next app-password login fails while she can
// still delete hers on her Security info page; dave requires alice to
// re-register MFA (the confirmation names her passkey; Cancel changes
// nothing, Yes does it) and her portal session ends. alice, not an admin,
// gets 403 on the admin pages.
func TestAdminFlow(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{web: true, failureDelay: "200ms"})
	p.admin(t, "user", "add", "dave", "--mfa", "enabled")
	p.admin(t, "user", "set-admin", "dave", "true")
	for _, u := range []string{"bob", "carol"} {
		p.admin(t, "user", "add", u, "--mfa", "disabled")
	}
	p.admin(t, "user", "add", "alice", "--mfa", "enabled")

	// alice registers a passkey (she is moved to enforced) in a tab of
	// her own, and gets an app password.
	alice := openPortal(t, p)
	registerPasskey(t, alice, "alice", d.Users["alice"])
	phone := p.appPassword(t, "alice", "Phone")

	// alice is no admin: 403.
	if resp := alice.visit("/admin/users"); resp.Status != 403 {
		t.Errorf("alice (no admin) got %d on /admin/users, want 403", resp.Status)
	}

	w := openPortal(t, p)
	registerPasskey(t, w, "dave", d.Users["dave"])
	w.visit("/admin")
	w.see("heading", "Active users")
	w.fill("Search", "bob")
	w.press("Search")
	w.see("link", "bob")
	if w.has("link", "carol") {
		t.Errorf("the search for bob shows carol:\n%s", w.page())
	}
	w.visit("/admin/users")
	adminShot(t, w, "admin-users")

	// Tick bob and carol, Enable.
	w.press("Multi-factor authentication")
	w.see("heading", "Multi-factor authentication")
	w.click("bob")
	w.click("carol")
	adminShot(t, w, "admin-mfa")
	w.press("Enable")
	w.seeText("now Enabled for bob, carol")
	for _, u := range []string{"bob", "carol"} {
		if out := p.admin(t, "user", "list", "--search", u); !strings.Contains(out, "enabled") {
			t.Errorf("%s is not enabled:\n%s", u, out)
		}
	}
	// Enforce for bob, on his page.
	w.visit("/admin/users/bob")
	w.press("Enforce")
	w.seeText("now Enforced for bob")
	adminShot(t, w, "admin-user")

	// bob's primary password is refused; carol's works.
	c := p.dial(t, true, "", nil)
	if err := c.Login("bob", d.Users["bob"]).Wait(); err == nil {
		t.Error("bob (enforced) logged in over IMAP with his primary password")
	}
	c.Close()
	c = p.dial(t, true, "", nil)
	if err := c.Login("carol", d.Users["carol"]).Wait(); err != nil {
		t.Errorf("carol (enabled) could not log in with her primary password: %v", err)
	}
	c.Logout().Wait()
	// carol's login is in the rollout once the audit journal has
	// committed it, in the background: reload until it is.
	if !eventually(patience, func() bool {
		w.visit("/admin/rollout")
		w.see("heading", "Rollout")
		return w.has("link", "carol")
	}) {
		t.Fatalf("the rollout does not show carol:\n%s", w.page())
	}
	if w.has("link", "bob") {
		t.Errorf("the rollout shows bob (enforced):\n%s", w.page())
	}
	adminShot(t, w, "admin-rollout")

	// alice's live IMAP session with her app password is closed when
	// dave revokes her app passwords.
	live := p.dial(t, true, "", nil)
	if err := live.Login("alice", phone).Wait(); err != nil {
		t.Fatalf("alice's app password: %v", err)
	}
	if _, err := live.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	w.visit("/admin/users/alice")
	adminShot(t, w, "admin-user-apppasswords")
	w.press("Revoke app passwords")
	// The confirmation names what will stop working; nothing is revoked
	// until Yes.
	w.see("heading", "Revoke app passwords of alice?")
	if got := w.text("list", "These app passwords of alice will stop working:"); got != "Phone" {
		t.Errorf("the confirmation lists the app passwords %q, want Phone:\n%s", got, w.page())
	}
	w.seeText("signed out at once")
	w.seeText("This cannot be undone.")
	if err := live.Noop().Wait(); err != nil {
		t.Errorf("alice's IMAP session ended before Yes was pressed: %v", err)
	}
	adminShot(t, w, "admin-confirm-revoke-all")
	w.press("Yes")
	w.seeText("Deleted 1 app password(s) of alice")
	deadline := time.Now().Add(time.Minute)
	for live.Noop().Wait() == nil {
		if time.Now().After(deadline) {
			t.Fatal("alice's IMAP session is still open a minute after her app passwords were revoked")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Forbid app passwords: alice's next app-password login fails, she
	// can still delete hers.
	laptop := p.appPassword(t, "alice", "Tablet")
	w.visit("/admin/settings")
	w.see("group", "App passwords")
	if !w.checked(allowAppPasswords) || w.checked(forbidAppPasswords) {
		t.Errorf("the switch does not show that app passwords are allowed:\n%s", w.page())
	}
	w.click(forbidAppPasswords)
	w.press("Save")
	w.seeText("Settings saved")
	if w.checked(allowAppPasswords) || !w.checked(forbidAppPasswords) {
		t.Errorf("the switch does not show that app passwords are not allowed:\n%s", w.page())
	}
	adminShot(t, w, "admin-settings")
	if out := p.admin(t, "settings", "show"); !strings.Contains(out, "allow-app-passwords: false") {
		t.Errorf("passgate settings show after Save with %q:\n%s", forbidAppPasswords, out)
	}
	c = p.dial(t, true, "", nil)
	if err := c.Login("alice", laptop).Wait(); err == nil {
		t.Error("alice logged in with an app password while app passwords are forbidden")
	}
	c.Close()
	alice.visit("/")
	alice.see("heading", "Security info")
	alice.seeText("Tablet")
	alice.press("Delete Tablet")
	alice.press("Yes")
	alice.see("heading", "Security info")
	if strings.Contains(alice.page(), "Tablet") {
		t.Errorf("alice could not delete her app password while they are forbidden:\n%s", alice.page())
	}

	// Require re-register MFA for alice: her passkey and her portal
	// session are gone, and she is back to enabled.
	w.visit("/admin/users/alice")
	w.press("Require re-register MFA")
	w.see("heading", "Require re-register MFA for alice?")
	stops := w.text("list", "These sign-in methods of alice will stop working and are deleted:")
	for _, want := range []string{"Authenticator app and recovery codes: none registered", "Passkey Laptop of alice",
		"Portal sessions: every browser signed in as alice is signed out"} {
		if !strings.Contains(stops, want) {
			t.Errorf("the confirmation's list lacks %q:\n%s", want, stops)
		}
	}
	w.seeText("Multi-factor auth status goes from Enforced back to Enabled")
	w.seeText("This cannot be undone.")
	adminShot(t, w, "admin-confirm-reset-methods")
	// Cancel goes back to alice's page and changes nothing.
	w.press("Cancel")
	w.see("heading", "alice")
	w.seeText("Multi-factor auth status: Enforced")
	if out := p.admin(t, "user", "list", "--search", "alice"); !strings.Contains(out, "enforced") {
		t.Errorf("alice is no longer enforced after Cancel:\n%s", out)
	}
	w.press("Require re-register MFA")
	w.see("heading", "Require re-register MFA for alice?")
	w.press("Yes")
	w.seeText("alice must register a sign-in method again at the next sign-in.")
	w.seeText("Multi-factor auth status: Enabled")
	if out := p.admin(t, "user", "list", "--search", "alice"); !strings.Contains(out, "enabled") {
		t.Errorf("alice is not back to enabled:\n%s", out)
	}
	alice.visit("/")
	alice.see("textbox", "User name")

	// The audit trail names dave for every change.
	w.visit("/admin/audit?user=bob")
	w.see("heading", "Audit")
	w.seeText("admin:dave")
	adminShot(t, w, "admin-audit")
}
