package testenv

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/dom"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Browser is one headless Chromium (Debian's chromium from the PATH),
// started once per test binary. Each test opens its own tab in its own
// browser context (NewTab), so that cookies and storage never leak from
// one test into another.
type Browser struct {
	ctx    context.Context // chromedp context that owns the browser
	cancel context.CancelFunc
	// ScreenshotDir is the temporary directory that Screenshot writes
	// into; the test binary logs it.
	ScreenshotDir string
	out           *lockedBuf
}

// Output returns what Chromium wrote on its standard output and error.
func (b *Browser) Output() string { return b.out.String() }

// Window sizes of the pages the tests look at.
var (
	Desktop = Window{Width: 1280, Height: 900}
	Phone   = Window{Width: 360, Height: 780, Mobile: true}
)

// Window is a viewport size; Mobile emulates a phone (touch, the meta
// viewport honoured).
type Window struct {
	Width, Height int64
	Mobile        bool
}

// StartBrowser starts Chromium with a profile in dir, trusting the test
// certificate of certs (by its public key, so that pages on
// https://localhost are secure contexts without a certificate error, as
// WebAuthn requires), with no network of its own beyond what pages load:
// no background requests, component updates, first-run or sync.
func StartBrowser(ctx context.Context, dir string, certs *Certs) (*Browser, error) {
	exe, err := exec.LookPath("chromium")
	if err != nil {
		return nil, fmt.Errorf("testenv: Chromium is not installed (Debian package chromium; the test command installs it): %w", err)
	}
	spki, err := spkiHashes(certs.CertFile)
	if err != nil {
		return nil, err
	}
	shots := filepath.Join(dir, "screenshots")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		return nil, fmt.Errorf("testenv: screenshot directory: %w", err)
	}
	out := &lockedBuf{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(filepath.Join(dir, "chromium-profile")),
		chromedp.NoSandbox, // the tests run as root
		chromedp.DisableGPU,
		chromedp.WindowSize(int(Desktop.Width), int(Desktop.Height)),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("dns-prefetch-disable", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater,PasswordManagerOnboarding"),
		chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(spki, ",")),
		// localhost is the relying party of the portal in tests; keep it
		// on the IPv4 loopback where the servers listen.
		chromedp.Flag("host-resolver-rules", "MAP localhost 127.0.0.1"),
		chromedp.CombinedOutput(out),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	b := &Browser{
		ctx:           bctx,
		cancel:        func() { cancelBrowser(); cancelAlloc() },
		ScreenshotDir: shots,
		out:           out,
	}
	// Start the browser now (the first Run does), with the caller's
	// deadline for the start only.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(bctx, chromedp.Navigate("about:blank")) }()
	select {
	case err := <-started:
		if err != nil {
			b.cancel()
			return nil, fmt.Errorf("testenv: start Chromium: %w\n%s", err, out.String())
		}
	case <-ctx.Done():
		b.cancel()
		return nil, fmt.Errorf("testenv: start Chromium: %w\n%s", ctx.Err(), out.String())
	}
	return b, nil
}

// Stop ends the browser and its processes.
func (b *Browser) Stop() { b.cancel() }

// NewTab opens a tab in a browser context of its own (its own cookies and
// storage) and returns its chromedp context; cancel closes the tab and
// discards the browser context.
func (b *Browser) NewTab() (context.Context, context.CancelFunc, error) {
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("testenv: open a tab: %w", err)
	}
	return ctx, cancel, nil
}

// SetWindow sets the tab's viewport to w.
func SetWindow(w Window) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetDeviceMetricsOverride, emulation.SetDeviceMetricsOverrideParams{
			Width: w.Width, Height: w.Height, DeviceScaleFactor: 1, Mobile: w.Mobile,
		})
		if err != nil {
			return fmt.Errorf("set the window to %dx%d: %w", w.Width, w.Height, err)
		}
		_, err = cdp.Call(ctx, t, emulation.SetTouchEmulationEnabled, emulation.SetTouchEmulationEnabledParams{Enabled: w.Mobile})
		return err
	})
}

// Screenshot takes a PNG of the whole page (beyond the viewport) and
// writes it as name.png into b.ScreenshotDir and into each of the extra
// directories that is not empty. It returns the path in ScreenshotDir.
func (b *Browser) Screenshot(ctx context.Context, name string, extra ...string) (string, error) {
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return "", fmt.Errorf("testenv: screenshot %s: %w", name, err)
	}
	path := filepath.Join(b.ScreenshotDir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		return "", fmt.Errorf("testenv: write screenshot: %w", err)
	}
	for _, dir := range extra {
		if dir == "" {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("testenv: screenshot directory: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			return "", fmt.Errorf("testenv: write screenshot: %w", err)
		}
	}
	return path, nil
}

// Control is an element found by its accessible role and name.
type Control struct {
	NodeID cdp.NodeID
	Role   string // computed role, as Chromium names it: button, link, textbox, radio, ...
}

// FindControls finds, under the DOM node root, the elements whose computed
// accessible name is name and whose computed role is one of roles
// ("button|link"; "" for any role but the text, label and document nodes
// that merely carry the name). It does not wait.
func FindControls(ctx context.Context, t *chromedp.Target, root cdp.NodeID, roles, name string) ([]Control, error) {
	want := map[string]bool{}
	for _, r := range strings.Split(roles, "|") {
		if r != "" {
			want[r] = true
		}
	}
	params := accessibility.QueryAXTreeParams{NodeID: root, AccessibleName: name}
	if len(want) == 1 {
		params.Role = roles
	}
	res, err := cdp.Call(ctx, t, accessibility.QueryAXTree, params)
	if err != nil {
		return nil, err
	}
	var backend []cdp.BackendNodeID
	var found []Control
	for _, ax := range res.Nodes {
		if ax.Ignored || ax.BackendDOMNodeID == 0 || ax.Role == nil {
			continue
		}
		role := strings.Trim(string(ax.Role.Value), `"`)
		switch {
		case len(want) > 0 && !want[role]:
			continue
		case len(want) == 0 && (role == "StaticText" || role == "InlineTextBox" || role == "LabelText" || role == "RootWebArea" || role == "none"):
			continue
		}
		backend = append(backend, ax.BackendDOMNodeID)
		found = append(found, Control{Role: role})
	}
	if len(backend) == 0 {
		return nil, nil
	}
	pushed, err := cdp.Call(ctx, t, dom.PushNodesByBackendIDsToFrontend, dom.PushNodesByBackendIDsToFrontendParams{BackendNodeIDs: backend})
	if err != nil {
		return nil, err
	}
	var out []Control
	for i, id := range pushed.NodeIDs {
		if id != 0 && i < len(found) {
			found[i].NodeID = id
			out = append(out, found[i])
		}
	}
	return out, nil
}

// ByRole is a query option that finds elements as a screen reader, a user
// or a user's script would: by their computed accessible role (button,
// link, textbox, heading, alert, list, ...; several as "button|link";
// "" for any) and accessible name (the visible text or the label). The
// selector of the query is only a label in error messages.
//
//	chromedp.Click("button Sign in", testenv.ByRole("button", "Sign in"))
func ByRole(roles, name string) chromedp.QueryOption {
	return chromedp.ByFunc(func(ctx context.Context, t *chromedp.Target, n *chromedp.Node) ([]cdp.NodeID, error) {
		found, err := FindControls(ctx, t, n.NodeID, roles, name)
		ids := make([]cdp.NodeID, len(found))
		for i, c := range found {
			ids[i] = c.NodeID
		}
		return ids, err
	})
}

// OnElement waits until an element with one of roles and the accessible
// name is in the page, then calls the JavaScript function fn with the
// first such element as this, and returns its result.
//
//	chromedp.Run(ctx, testenv.OnElement[string]("", "Secret key", `function() { return this.innerText }`))
func OnElement[T any](roles, name, fn string) chromedp.Action[T] {
	return chromedp.QueryAfter(roles+" "+name, func(ctx context.Context, t *chromedp.Target, nodes []*chromedp.Node) (T, error) {
		var zero T
		obj, err := cdp.Call(ctx, t, dom.ResolveNode, dom.ResolveNodeParams{NodeID: nodes[0].NodeID})
		if err != nil {
			return zero, err
		}
		return chromedp.CallFunctionOn[T](fn, func(p *runtime.CallFunctionOnParams) { p.ObjectID = obj.Object.ObjectID })(ctx, t)
	}, ByRole(roles, name), chromedp.NodeReady)
}

// spkiHashes returns the base64 SHA-256 hashes of the public keys of the
// certificates in a PEM file, as Chromium's
// --ignore-certificate-errors-spki-list wants them.
func spkiHashes(file string) ([]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("testenv: read certificate: %w", err)
	}
	var hashes []string
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("testenv: parse %s: %w", file, err)
		}
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		hashes = append(hashes, base64.StdEncoding.EncodeToString(sum[:]))
	}
	if len(hashes) == 0 {
		return nil, errors.New("testenv: no certificate in " + file)
	}
	return hashes, nil
}
