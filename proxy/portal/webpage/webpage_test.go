package webpage

import (
	"bytes"
	"html/template"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

func TestHeaders(t *testing.T) {
	h := Headers("default-src 'none'", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	for name, want := range map[string]string{
		"Content-Security-Policy": "default-src 'none'",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"Cache-Control":           "no-store",
		"X-Frame-Options":         "DENY",
	} {
		if got := rec.Header().Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestRender(t *testing.T) {
	fsys := fstest.MapFS{
		"templates/layout.html": {Data: []byte(`<title>{{.}}</title>{{template "content" .}}`)},
		"templates/hello.html":  {Data: []byte(`{{define "content"}}<p>{{up .}}</p>{{end}}`)},
		"templates/broken.html": {Data: []byte(`{{define "content"}}{{.Missing}}{{end}}`)},
	}
	pages, err := Parse(fsys, template.FuncMap{"up": strings.ToUpper})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pages["layout"]; ok || len(pages) != 2 {
		t.Fatalf("pages %v: want hello and broken, not the layout", pages)
	}
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	tests := []struct {
		name, page string
		status     int
		wantStatus int
		wantBody   string
	}{
		{"ok", "hello", http.StatusCreated, http.StatusCreated, "<title>a&lt;b</title><p>A&lt;B</p>"},
		{"unknown", "nope", http.StatusOK, http.StatusInternalServerError, "no such page\n"},
		{"broken", "broken", http.StatusOK, http.StatusInternalServerError, "Internal Server Error\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			pages.Render(rec, log, "render test page", tc.status, tc.page, "a<b")
			if rec.Code != tc.wantStatus || rec.Body.String() != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", rec.Code, rec.Body.String(), tc.wantStatus, tc.wantBody)
			}
		})
	}
	if !strings.Contains(logged.String(), "render test page") || !strings.Contains(logged.String(), "template broken") {
		t.Fatalf("the failed template was not logged: %s", logged.String())
	}
}
