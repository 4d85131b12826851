package portal

import "strings"

// describeAgent turns a browser's User-Agent into the short form that the
// Security info page shows for a session: "Chrome on Linux",
// "Firefox on Windows", "Safari on iPhone". It reads only the well-known
// tokens, in the order that tells browsers apart (Edge and Opera claim to
// be Chrome, Chrome claims to be Safari); what it does not know it calls
// "Unknown browser" or leaves the system out. It never returns more than
// a few words, whatever the header holds.
func describeAgent(ua string) string {
	if ua == "" {
		return "Unknown browser"
	}
	browser := "Unknown browser"
	for _, b := range []struct{ token, name string }{
		{"Edg/", "Edge"}, {"EdgA/", "Edge"}, {"EdgiOS/", "Edge"},
		{"OPR/", "Opera"}, {"Vivaldi/", "Vivaldi"}, {"SamsungBrowser/", "Samsung Internet"},
		{"Firefox/", "Firefox"}, {"FxiOS/", "Firefox"},
		{"HeadlessChrome/", "Chrome"}, {"Chromium/", "Chromium"}, {"CriOS/", "Chrome"}, {"Chrome/", "Chrome"},
		{"Safari/", "Safari"},
		{"curl/", "curl"}, {"Wget/", "Wget"},
	} {
		if strings.Contains(ua, b.token) {
			browser = b.name
			break
		}
	}
	system := ""
	for _, o := range []struct{ token, name string }{
		{"iPhone", "iPhone"}, {"iPad", "iPad"}, {"Android", "Android"}, {"CrOS", "ChromeOS"},
		{"Windows", "Windows"}, {"Macintosh", "macOS"}, {"Mac OS X", "macOS"}, {"Linux", "Linux"},
		{"FreeBSD", "FreeBSD"}, {"OpenBSD", "OpenBSD"},
	} {
		if strings.Contains(ua, o.token) {
			system = o.name
			break
		}
	}
	if system == "" {
		return browser
	}
	return browser + " on " + system
}
