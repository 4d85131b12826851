package portal

import "testing"

func TestDescribeAgent(t *testing.T) {
	for _, tc := range []struct{ name, ua, want string }{
		{"ok/chrome-linux", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", "Chrome on Linux"},
		{"ok/headless-chrome", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36", "Chrome on Linux"},
		{"ok/edge-windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91", "Edge on Windows"},
		{"ok/firefox-windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0", "Firefox on Windows"},
		{"ok/safari-mac", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15", "Safari on macOS"},
		{"ok/safari-iphone", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1", "Safari on iPhone"},
		{"ok/chrome-android", "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36", "Chrome on Android"},
		{"ok/opera", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0", "Opera on Windows"},
		{"ok/curl", "curl/8.5.0", "curl"},
		{"ok/go-client", "Go-http-client/2.0", "Unknown browser"},
		{"ok/empty", "", "Unknown browser"},
		{"ok/junk", "<script>alert(1)</script> " + string(make([]byte, 200)), "Unknown browser"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := describeAgent(tc.ua); got != tc.want {
				t.Errorf("describeAgent(%q) = %q, want %q", tc.ua, got, tc.want)
			}
		})
	}
}
