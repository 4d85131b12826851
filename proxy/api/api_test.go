package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/api"
)

var (
	pgBase string
	dbSeq  atomic.Int64
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	base, stop, err := testenv.Postgres(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: the API tests run against PostgreSQL too: %v\n", err)
		os.Exit(1)
	}
	pgBase = base
	code := m.Run()
	stop()
	os.Exit(code)
}

// openStore returns a fresh, migrated store of driver.
func openStore(t *testing.T, driver string) *store.Store {
	t.Helper()
	st, _ := openBenchStore(t, driver)
	return st
}

// openBenchStore returns a fresh, migrated store of driver and its DSN.
func openBenchStore(t testing.TB, driver string) (*store.Store, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	o := store.Options{Driver: driver, DSN: filepath.Join(dir, "p.db"), KeyFile: filepath.Join(dir, "p.key")}
	if driver == store.DriverPostgres {
		name := fmt.Sprintf("api_%d_%d", os.Getpid(), dbSeq.Add(1))
		dsn, err := testenv.CreateDatabase(ctx, pgBase, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = testenv.DropDatabase(context.Background(), pgBase, name) })
		o.DSN = dsn
	}
	st, err := store.Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return st, o.DSN
}

// fixture is an API server on a store, with the OpenAPI router.
type fixture struct {
	t      *testing.T
	srv    *httptest.Server
	admin  *account.Admin
	router routers.Router
	doc    *openapi3.T
	client string          // "go" or "curl"
	hit    map[string]bool // operation ids called
}

func newFixture(t *testing.T, st *store.Store, lock policy.Lockout) *fixture {
	t.Helper()
	admin := account.NewAdmin(account.AdminOptions{Store: st})
	engine := policy.New(policy.Options{Store: st, FailureDelay: -1, Lockout: lock,
		TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	srv, err := api.New(api.Options{Ops: admin, Tokens: api.EngineTokens{Engine: engine, Check: admin}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("load openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: ts.URL + "/api/v1"}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, srv: ts, admin: admin, router: router, doc: doc, client: "go", hit: map[string]bool{}}
}

func (f *fixture) token(name string, readOnly bool, expires *time.Time) string {
	f.t.Helper()
	_, tok, err := f.admin.CreateToken(context.Background(), account.Actor{Kind: "cli", User: "test"}, name, readOnly, expires)
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

// call is one request and what must come back.
type call struct {
	method, path, token string
	body                string
	status              int
	code                string // the error code, for an error
	badRequest          bool   // the request itself breaks the document (malformed JSON…)
}

// do sends c with the fixture's client, validates the request (unless
// it is meant to break the document) and the response against the
// OpenAPI document, and checks the status and error code.
func (f *fixture) do(c call) (*http.Response, []byte) {
	t := f.t
	t.Helper()
	req, err := http.NewRequest(c.method, f.srv.URL+"/api/v1"+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	route, params, err := f.router.FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s: not in the OpenAPI document: %v", c.method, c.path, err)
	}
	f.hit[route.Operation.OperationID] = true
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if !c.badRequest && c.token != "" {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Errorf("%s %s: the request breaks the OpenAPI document: %v", c.method, c.path, err)
		}
		req.Body = io.NopCloser(strings.NewReader(c.body))
	}
	var resp *http.Response
	var body []byte
	switch f.client {
	case "curl":
		resp, body = f.curl(c)
	default:
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(r.Body)
		r.Body.Close()
		resp = r
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s %s (%s): the response breaks the OpenAPI document: %v\n%s", c.method, c.path, f.client, err, body)
	}
	if resp.StatusCode != c.status {
		t.Errorf("%s %s (%s): status %d, want %d: %s", c.method, c.path, f.client, resp.StatusCode, c.status, body)
	}
	if c.code != "" {
		var e api.Error
		if err := json.Unmarshal(body, &e); err != nil || e.Code != c.code || e.Message == "" {
			t.Errorf("%s %s (%s): error %s, want code %q", c.method, c.path, f.client, body, c.code)
		}
	}
	return resp, body
}

// curl sends c with the curl command and parses its -i output.
func (f *fixture) curl(c call) (*http.Response, []byte) {
	t := f.t
	t.Helper()
	args := []string{"-sS", "-i", "--raw", "-X", c.method}
	if c.body != "" {
		args = append(args, "--data-binary", "@-")
	}
	if c.token != "" {
		args = append(args, "-H", "Authorization: Bearer "+c.token)
	}
	if c.body != "" {
		args = append(args, "-H", "Content-Type: application/json")
	}
	args = append(args, "-H", "Expect:", f.srv.URL+"/api/v1"+c.path)
	cmd := exec.Command("curl", args...)
	cmd.Stdin = strings.NewReader(c.body)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s %s: %v", c.method, c.path, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("curl %s %s: read its output: %v\n%s", c.method, c.path, err, out)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// TestAPI walks every path of the API on SQLite and PostgreSQL, with
// Go's client and with curl, each request and response validated against
// the OpenAPI document.
func TestAPI(t *testing.T) {
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		for _, client := range []string{"go", "curl"} {
			t.Run(driver+"/"+client, func(t *testing.T) {
				f := newFixture(t, openStore(t, driver), policy.Lockout{})
				f.client = client
				walk(t, f)
			})
		}
	}
}

func walk(t *testing.T, f *fixture) {
	rw := f.token("automation", false, nil)
	ro := f.token("reader", true, nil)
	past := time.Now().Add(-time.Minute)
	expired := f.token("old", false, &past)
	big := `{"name":"` + strings.Repeat("a", api.MaxBody) + `"}`
	for _, c := range []call{
		{method: "GET", path: "/openapi.json", status: 200},
		{method: "GET", path: "/users", status: 401, code: "unauthorized"},
		{method: "GET", path: "/users", token: rw + "x", status: 401, code: "unauthorized"},
		{method: "GET", path: "/users", token: expired, status: 401, code: "unauthorized"},
		{method: "POST", path: "/users", token: ro, body: `{"name":"alice"}`, status: 403, code: "read_only"},
		{method: "POST", path: "/users", token: rw, body: `{"name":"alice","mfa":"enabled"}`, status: 201},
		{method: "POST", path: "/users", token: rw, body: `{"name":"bob","mfa":"enforced","admin":true}`, status: 201},
		{method: "POST", path: "/users", token: rw, body: `{"name":"carol"}`, status: 201},
		{method: "POST", path: "/users", token: rw, body: `{"name":"Alice"}`, status: 409, code: "exists"},
		{method: "POST", path: "/users", token: rw, body: `{"name":`, status: 400, code: "malformed_json", badRequest: true},
		{method: "POST", path: "/users", token: rw, body: `{"name":"dave","shell":"/bin/sh"}`, status: 400, code: "unknown_field", badRequest: true},
		{method: "POST", path: "/users", token: rw, body: big, status: 413, code: "body_too_large", badRequest: true},
		{method: "GET", path: "/users/alice", token: ro, status: 200},
		{method: "GET", path: "/users/nobody", token: ro, status: 404, code: "not_found"},
		{method: "PUT", path: "/users/alice/mfa", token: rw, body: `{"mfa":"enforced"}`, status: 200},
		{method: "PUT", path: "/users/alice/mfa", token: rw, body: `{"mfa":"sometimes"}`, status: 400, code: "invalid", badRequest: true},
		{method: "PUT", path: "/users/carol/admin", token: rw, body: `{"admin":true}`, status: 200},
		{method: "PUT", path: "/users/nobody/admin", token: rw, body: `{"admin":true}`, status: 404, code: "not_found"},
		{method: "POST", path: "/users/alice/app-passwords", token: rw, body: `{"label":"Phone","scopes":["imap","smtp"]}`, status: 201},
		{method: "POST", path: "/users/alice/app-passwords", token: rw, body: `{"label":"phone"}`, status: 409, code: "exists"},
		{method: "GET", path: "/users/alice/app-passwords", token: ro, status: 200},
		{method: "DELETE", path: "/users/alice/app-passwords/phone", token: rw, status: 204},
		{method: "DELETE", path: "/users/alice/app-passwords/phone", token: rw, status: 404, code: "not_found"},
		{method: "POST", path: "/users/alice/app-passwords", token: rw, body: `{"label":"Laptop"}`, status: 201},
		{method: "POST", path: "/users/alice/app-passwords", token: rw, body: `{"label":"Tablet"}`, status: 201},
		{method: "POST", path: "/users/alice/app-passwords", token: rw, body: `{"label":"Scanner","networks":["192.0.2.0/33"]}`, status: 400, code: "invalid"},
		{method: "DELETE", path: "/users/alice/app-passwords", token: ro, status: 403, code: "read_only"},
		{method: "DELETE", path: "/users/alice/app-passwords", token: rw, status: 200},
		{method: "GET", path: "/users/alice/methods", token: ro, status: 200},
		{method: "DELETE", path: "/users/alice/methods", token: rw, status: 204},
		{method: "GET", path: "/settings", token: ro, status: 200},
		{method: "PUT", path: "/settings", token: rw, body: `{"allow_app_passwords":false}`, status: 200},
		{method: "POST", path: "/users/carol/app-passwords", token: rw, body: `{"label":"Outlook"}`, status: 409, code: "app_passwords_disabled"},
		{method: "PUT", path: "/settings", token: rw, body: `{"allow_app_passwords":true}`, status: 200},
		{method: "PUT", path: "/settings", token: rw, body: `{}`, status: 400, code: "invalid", badRequest: true},
		{method: "GET", path: "/users?limit=0", token: ro, status: 400, code: "invalid", badRequest: true},
		{method: "GET", path: "/audit?since=yesterday", token: ro, status: 400, code: "invalid", badRequest: true},
		{method: "DELETE", path: "/users/carol", token: rw, status: 204},
		{method: "DELETE", path: "/users/carol", token: rw, status: 404, code: "not_found"},
	} {
		f.do(c)
	}

	// An app password bound to networks: they come back as prefixes.
	_, body := f.do(call{method: "POST", path: "/users/alice/app-passwords", token: rw, body: `{"label":"Printer","scopes":["smtp"],"networks":["192.0.2.0/24","2001:db8::1"]}`, status: 201})
	if !strings.Contains(string(body), `"networks":["192.0.2.0/24","2001:db8::1/128"]`) {
		t.Errorf("created app password with networks: %s", body)
	}

	// Paging users: pages of 1 until past the end.
	var names []string
	after := ""
	for range 5 {
		_, body := f.do(call{method: "GET", path: "/users?limit=1" + after, token: ro, status: 200})
		var page struct {
			Users []struct{ Name string }
			Next  string
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		for _, u := range page.Users {
			names = append(names, u.Name)
		}
		if page.Next == "" {
			break
		}
		after = "&after=" + page.Next
	}
	if strings.Join(names, ",") != "alice,bob" {
		t.Errorf("paged users = %v, want alice,bob", names)
	}
	_, body = f.do(call{method: "GET", path: "/users?after=zzz", token: ro, status: 200})
	if !strings.Contains(string(body), `"users":[]`) {
		t.Errorf("past the end: %s", body)
	}
	_, body = f.do(call{method: "GET", path: "/users?search=LIC", token: ro, status: 200})
	if !strings.Contains(string(body), `"alice"`) || strings.Contains(string(body), `"bob"`) {
		t.Errorf("search LIC: %s", body)
	}

	// The audit trail: every change above, by the token, newest first,
	// paged with the cursor until past the end.
	seen := 0
	before := ""
	for range 50 {
		_, body := f.do(call{method: "GET", path: "/audit?user=alice&limit=3" + before, token: ro, status: 200})
		var page struct {
			Events []account.AuditEvent
			Next   string
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		for _, ev := range page.Events {
			if ev.Actor != "api:automation" {
				t.Errorf("event %+v: actor %q, want api:automation", ev, ev.Actor)
			}
		}
		seen += len(page.Events)
		if page.Next == "" {
			break
		}
		before = "&after=" + page.Next
	}
	if seen < 8 {
		t.Errorf("audit of alice: %d events, want every change", seen)
	}
	// Every operation of the document was called.
	for path, item := range f.doc.Paths.Map() {
		for method, op := range item.Operations() {
			if !f.hit[op.OperationID] {
				t.Errorf("%s %s (%s) is in the document but no test calls it", method, path, op.OperationID)
			}
		}
	}
	_, body = f.do(call{method: "GET", path: "/audit?protocol=api&outcome=failure&limit=100", token: ro, status: 200})
	if !strings.Contains(string(body), `"subject":"admin-token"`) {
		t.Errorf("the refused tokens are not in the audit trail: %s", body)
	}
}

// TestTokenLockout: wrong tokens count in the lockout, after which even
// the right token gets the same 401. Each wrong token is another (a
// repeated one counts once, as a client retrying a stale secret does).
func TestTokenLockout(t *testing.T) {
	f := newFixture(t, openStore(t, store.DriverSQLite), policy.Lockout{MaxFailures: 3, MaxAddressFailures: 3, MaxUserFailures: 100})
	rw := f.token("automation", false, nil)
	for i := range 3 {
		f.do(call{method: "GET", path: "/settings", token: fmt.Sprintf("pgat_wrong%d", i), status: 401, code: "unauthorized"})
	}
	f.do(call{method: "GET", path: "/settings", token: rw, status: 401, code: "unauthorized"})
}

// TestUnknownPathAndMethod: outside the document, answers are still JSON
// errors, and only after the token is checked.
func TestUnknownPathAndMethod(t *testing.T) {
	f := newFixture(t, openStore(t, store.DriverSQLite), policy.Lockout{})
	rw := f.token("automation", false, nil)
	for _, c := range []struct {
		method, path, token string
		status              int
		code                string
	}{
		{"GET", "/api/v1/nope", "", 401, "unauthorized"},
		{"GET", "/api/v1/nope", rw, 404, "not_found"},
		{"PATCH", "/api/v1/users", "", 401, "unauthorized"},
		{"PATCH", "/api/v1/users", rw, 405, "method_not_allowed"},
	} {
		req, _ := http.NewRequest(c.method, f.srv.URL+c.path, nil)
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != c.status || err != nil || e.Code != c.code || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %+v (%v), want %d %s", c.method, c.path, resp.StatusCode, e, err, c.status, c.code)
		}
	}
}
