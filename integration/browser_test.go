package integration

import (
	"context"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/passgate/passgate/integration/testenv"
)

// browserState is test-only state: the one Chromium of this test binary,
// started on first use and stopped by TestMain.
var browserState struct {
	once    sync.Once
	browser *testenv.Browser
	err     error
	stop    func()
}

// screenshotsEnv names a directory that the tests also write their
// screenshots into (the README's images are taken from there).
const screenshotsEnv = "PASSGATE_SCREENSHOTS_DIR"

// browserTimeout bounds one browser test: generous, as the tests wait for
// states, never for a time (each step waits up to stepTimeout). Under two
// CPU hogs and -race TestPortalFlow took about 90 s, and 150 s when made
// to repeat its TOTP round: 3 min was too close.
const browserTimeout = 10 * time.Minute

// startBrowser starts Chromium once per test binary.
func startBrowser() (*testenv.Browser, error) {
	browserState.once.Do(func() {
		browserState.stop = func() {}
		dir := filepath.Join(env.dir, "chromium")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			browserState.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		b, err := testenv.StartBrowser(ctx, dir, env.certs)
		if err != nil {
			browserState.err = err
			return
		}
		browserState.browser = b
		browserState.stop = b.Stop
	})
	return browserState.browser, browserState.err
}

// tab opens a new tab, in a browser context of its own, for the test; its
// context ends with the test or after browserTimeout. It logs where the
// screenshots go.
func tab(t *testing.T) (context.Context, *testenv.Browser) {
	t.Helper()
	b, err := startBrowser()
	if err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	ctx, cancel, err := b.NewTab()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, browserTimeout)
	t.Cleanup(cancelTimeout)
	t.Logf("screenshots in %s", b.ScreenshotDir)
	return ctx, b
}

// shot saves a screenshot of the tab's page as name.png, also into
// $PASSGATE_SCREENSHOTS_DIR when it is set.
func shot(t *testing.T, ctx context.Context, b *testenv.Browser, name string) string {
	t.Helper()
	path, err := b.Screenshot(ctx, name, os.Getenv(screenshotsEnv))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", path)
	return path
}

// axeClean runs axe-core on the tab's page and fails the test on every
// violation it reports (its rule, impact and elements). Without axe-core
// ($PASSGATE_AXE_JS) it fails.
func axeClean(t *testing.T, ctx context.Context, page string) {
	t.Helper()
	script, err := testenv.AxeScript()
	if err != nil {
		t.Fatal(err)
	}
	violations, err := testenv.Axe(ctx, script)
	if err != nil {
		t.Fatalf("axe-core on the %s page: %v", page, err)
	}
	for _, v := range violations {
		t.Errorf("axe-core on the %s page: %s", page, v)
	}
}

// TestBrowserHarness checks the harness itself on a small local page
// served over HTTPS at localhost with the test certificate: Chromium
// loads it as a secure context, finds controls by role and name, takes
// screenshots at both widths, axe-core finds nothing on a clean page and
// finds the missing label on a broken one, and the virtual authenticator
// makes a passkey.
func TestBrowserHarness(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/clean", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte(`<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Harness</title></head>
<body><main><h1>Security info</h1>
<form method="post" action="/clean"><label for="u">User name</label> <input id="u" name="u" autocomplete="username">
<button type="submit">Sign in</button></form>
<p><span id="k-label">Secret key</span> <code aria-labelledby="k-label">ABCD EFGH</code></p>
</main></body></html>`))
	})
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte(`<!doctype html><html lang="en"><head><title>Broken</title></head>
<body><main><h1>Broken</h1><input id="nolabel"></main></body></html>`))
	})
	mux.HandleFunc("/form", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if r.Method == http.MethodPost {
			r.ParseForm()
			fmt.Fprintf(w, `<!doctype html><html lang="en"><title>Result</title><body><main><h1>Result</h1>
<p role="alert">%s %s %s %s</p></main></body></html>`,
				html.EscapeString(r.PostFormValue("pw")), html.EscapeString(r.PostFormValue("method")),
				html.EscapeString(r.PostFormValue("kind")), html.EscapeString(r.PostFormValue("code")))
			return
		}
		w.Write([]byte(`<!doctype html><html lang="en"><title>Form</title><body><main><h1>Form</h1>
<form method="post" action="/form">
<label for="pw">Password</label><input id="pw" name="pw" type="password">
<fieldset><legend>Method</legend>
<label><input type="radio" name="method" value="totp"> Authenticator app</label>
<label><input type="radio" name="method" value="apppw"> App password</label></fieldset>
<label for="kind">Kind</label><select id="kind" name="kind"><option value="a">Passkey</option><option value="b">Security key</option></select>
<label for="code">Code</label><input id="code" name="code" inputmode="numeric" autocomplete="one-time-code">
<label for="key">Secret key</label><input id="key" readonly value="JBSW Y3DP">
<h2 id="rc">Recovery codes</h2><ul aria-labelledby="rc"><li>aaaa-bbbb</li><li>cccc-dddd</li></ul>
<button type="submit">Next</button></form></main></body></html>`))
	})
	mux.HandleFunc("/passkey", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte(`<!doctype html><html lang="en"><head><title>Passkey</title></head><body><main><h1>Passkey</h1></main></body></html>`))
	})
	srv := httptest.NewUnstartedServer(mux)
	tlsCfg, err := env.certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = tlsCfg
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	base := "https://localhost:" + port

	ctx, b := tab(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/clean"),
		chromedp.WaitVisible("heading Security info", testenv.ByRole("heading", "Security info"))); err != nil {
		t.Fatalf("load the clean page: %v", err)
	}
	secure, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.isSecureContext && location.protocol === "https:"`))
	if err != nil || !secure {
		t.Fatalf("the page over https://localhost is not a secure context (%v): is the test certificate trusted?", err)
	}
	key, err := chromedp.Run(ctx, chromedp.Text("Secret key", testenv.ByRole("", "Secret key")))
	if err != nil || key != "ABCD EFGH" {
		t.Errorf("text labelled Secret key = %q, %v; want ABCD EFGH", key, err)
	}
	if err := chromedp.Do(ctx, chromedp.SendKeys("User name", "alice", testenv.ByRole("textbox", "User name"))); err != nil {
		t.Errorf("type into the field labelled User name: %v", err)
	}
	if v, err := chromedp.Run(ctx, chromedp.Value(chromedp.ID("u"))); err != nil || v != "alice" {
		t.Errorf("User name field holds %q, %v; want alice", v, err)
	}
	axeClean(t, ctx, "clean")
	for _, w := range []struct {
		name string
		win  testenv.Window
	}{{"harness-desktop", testenv.Desktop}, {"harness-phone", testenv.Phone}} {
		if err := chromedp.Do(ctx, testenv.SetWindow(w.win)); err != nil {
			t.Fatal(err)
		}
		path := shot(t, ctx, b, w.name)
		png, err := os.ReadFile(path)
		if err != nil || !strings.HasPrefix(string(png), "\x89PNG") {
			t.Errorf("%s is not a PNG (%v)", path, err)
		}
		width, err := chromedp.Run(ctx, chromedp.Evaluate[int64](`window.innerWidth`))
		if err != nil || width != w.win.Width {
			t.Errorf("%s: window.innerWidth = %d, %v; want %d", w.name, width, err, w.win.Width)
		}
	}

	// The portal tests' helpers, on a form like the portal's.
	w := &portal{t: t, ctx: ctx, b: b, base: base}
	w.visit("/form")
	w.fill("Password", "s3cret")
	w.choose("App password")
	w.choose("Security key")
	w.fill("Code", "1234")
	w.fill("Code", "123456")
	if got := w.text("", "Secret key"); got != "JBSW Y3DP" {
		t.Errorf("text of the field labelled Secret key = %q", got)
	}
	items, err := chromedp.Run(ctx, testenv.OnElement[[]string]("list", "Recovery codes",
		`function() { return Array.from(this.querySelectorAll("li")).map(li => li.innerText.trim()) }`))
	if err != nil || len(items) != 2 || items[1] != "cccc-dddd" {
		t.Errorf("items of the list labelled Recovery codes: %q, %v", items, err)
	}
	if !w.has("button", "Next") || w.has("button", "Sign in") {
		t.Errorf("has: wrong answer")
	}
	if resp := w.press("Next"); resp.Status != http.StatusOK {
		t.Errorf("press Next: %d", resp.Status)
	}
	if got := w.alert(); got != "s3cret apppw b 123456" {
		t.Errorf("the form sent %q, want s3cret apppw b 123456", got)
	}

	// axe-core must be able to fail.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/broken"),
		chromedp.WaitVisible("heading Broken", testenv.ByRole("heading", "Broken"))); err != nil {
		t.Fatal(err)
	}
	script, err := testenv.AxeScript()
	if err != nil {
		t.Fatal(err)
	}
	violations, err := testenv.Axe(ctx, script)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range violations {
		found = found || v.ID == "label"
	}
	if !found {
		t.Errorf("axe-core found no missing label on a page with an unlabelled input; violations: %v", violations)
	}

	// The virtual authenticator answers navigator.credentials.create.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/passkey"),
		chromedp.WaitVisible("heading Passkey", testenv.ByRole("heading", "Passkey"))); err != nil {
		t.Fatal(err)
	}
	authID, err := testenv.VirtualAuthenticator(ctx)
	if err != nil {
		t.Fatal(err)
	}
	made, err := chromedp.Run(ctx, chromedp.Evaluate[string](`navigator.credentials.create({publicKey: {
  rp: {id: "localhost", name: "harness"},
  user: {id: new Uint8Array([1,2,3,4]), name: "alice", displayName: "alice"},
  challenge: crypto.getRandomValues(new Uint8Array(32)),
  pubKeyCredParams: [{type: "public-key", alg: -7}],
  authenticatorSelection: {residentKey: "required", userVerification: "required"},
}}).then(c => c.type)`, chromedp.EvalAwaitPromise))
	if err != nil || made != "public-key" {
		t.Fatalf("navigator.credentials.create with the virtual authenticator: %q, %v", made, err)
	}
	creds, err := testenv.AuthenticatorCredentials(ctx, authID)
	if err != nil || len(creds) != 1 || creds[0].RpID != "localhost" {
		t.Errorf("the virtual authenticator holds %d credentials (%v), want one for localhost", len(creds), err)
	}
}
