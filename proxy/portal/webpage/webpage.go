// Package webpage is what the server-rendered faces of passgate (the
// portal and the admin center) share: their pages, each parsed with the
// face's layout and rendered whole before a byte is sent, and the security
// headers of every response. It sits under the portal, the web face the
// admin center is mounted beside and takes its stylesheet from. It imports
// no passgate package.
package webpage

import (
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
)

// Pages are a face's page templates by name ("users" for
// templates/users.html), each parsed with templates/layout.html.
type Pages map[string]*template.Template

// Parse parses every templates/*.html of fsys but the layout, each with
// templates/layout.html and funcs.
func Parse(fsys fs.FS, funcs template.FuncMap) (Pages, error) {
	names, err := fs.Glob(fsys, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := Pages{}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(fsys, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", n, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// Render writes the page name, its layout executed with data, with
// status. The page is rendered whole first: a template that fails is
// logged as msg and answered 500, never sent in half.
func (p Pages) Render(w http.ResponseWriter, log *slog.Logger, msg string, status int, name string, data any) {
	t, ok := p[name]
	if !ok {
		http.Error(w, "no such page", http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, "layout.html", data); err != nil {
		log.Error(msg, slog.String("reason", "template "+name), slog.Any("err", err))
		http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// Headers sets on every response of next the security headers every face
// sends: csp as its Content-Security-Policy, and no sniffing, no referrer,
// no framing, no caching.
func Headers(csp string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Frame-Options", "DENY")
		next.ServeHTTP(w, r)
	})
}
