package api_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/admin"
	"github.com/passgate/passgate/proxy/api"
)

// signedIn signs in the admin "admin" on every request.
type signedIn struct{}

func (signedIn) SignedIn(http.ResponseWriter, *http.Request) (string, bool) { return "admin", true }

func (signedIn) Reverify(http.ResponseWriter, *http.Request, string) bool { return true }

// seed fills the store with 10 000 users, 50 000 app passwords (5 each,
// last used) and 1 000 000 audit events, a tenth of them primary-password
// logins of enabled users, in SQL (each store generates its rows).
func seed(b *testing.B, driver, dsn string) {
	b.Helper()
	ctx := context.Background()
	sqlDriver := "sqlite"
	series := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d) SELECT x FROM c`
	hash := `randomblob(32)`
	pad := `printf('%05d', x)`
	now := `'2026-12-01 00:00:00+00:00'`
	ts := func(sec string) string { return `datetime('2026-12-01', '+' || (` + sec + `) || ' seconds')` }
	if driver == store.DriverPostgres {
		sqlDriver = "postgres"
		series = `SELECT generate_series(1, %d) AS x`
		hash = `decode(md5(x::text), 'hex') || decode(md5((x + 1)::text), 'hex')`
		pad = `lpad(x::text, 5, '0')`
		now = `TIMESTAMPTZ '2026-12-01 00:00:00+00'`
		ts = func(sec string) string {
			return `TIMESTAMPTZ '2026-12-01 00:00:00+00' + ((` + sec + `) * INTERVAL '1 second')`
		}
	} else {
		dsn += "?_time_format=sqlite"
	}
	db, err := sql.Open(sqlDriver, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		`INSERT INTO users (name_key, name, mfa, created_at, updated_at) SELECT 'user' || ` + pad + `, 'user' || ` + pad + `, CASE WHEN x % 3 = 0 THEN 'enabled' WHEN x % 3 = 1 THEN 'enforced' ELSE 'disabled' END, ` + now + `, ` + now + ` FROM (` + fmt.Sprintf(series, 10000) + `) s`,
		`INSERT INTO app_passwords (user_key, user_name, label, label_key, scopes, hash, created_at, last_used_at) SELECT 'user' || ` + pad2(driver) + `, 'user' || ` + pad2(driver) + `, 'app' || x, 'app' || x, 'imap,smtp,ldap', ` + hash + `, ` + now + `, ` + ts("x") + ` FROM (` + fmt.Sprintf(series, 50000) + `) s`,
		`INSERT INTO audit_events (time, is_login, actor, detail, action, subject, subject_key, outcome, protocol, client_addr, client_port, tls, credential, app_password_id, label, reason, client_name) SELECT ` + ts("x") + `, TRUE, '', '', 'login', 'user' || ` + pad3(driver) + `, 'user' || ` + pad3(driver) + `, 'success', 'imap', '192.0.2.' || (x % 250), 1024 + x % 60000, TRUE, ` +
			`CASE WHEN x % 10 = 0 THEN 'primary' ELSE 'app-password' END, CASE WHEN x % 10 = 0 THEN NULL ELSE 1 END, CASE WHEN x % 10 = 0 THEN '' ELSE 'app' END, ` +
			`CASE WHEN x % 10 = 0 THEN 'primary password accepted; would be refused once enforced' ELSE 'app password matched' END, CASE WHEN x % 10 = 0 THEN 'Client' || (x % 7) ELSE '' END FROM (` + fmt.Sprintf(series, 1000000) + `) s`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			b.Fatalf("seed: %v\n%s", err, q)
		}
	}
	if _, err := db.ExecContext(ctx, `ANALYZE`); err != nil {
		b.Fatal(err)
	}
}

// pad2 is the user of app password x: user (x-1)/5+1, five each.
func pad2(driver string) string {
	if driver == store.DriverPostgres {
		return `lpad(((x - 1) / 5 + 1)::text, 5, '0')`
	}
	return `printf('%05d', (x - 1) / 5 + 1)`
}

// pad3 is the user of audit event x: spread over every user.
func pad3(driver string) string {
	if driver == store.DriverPostgres {
		return `lpad((x % 10000 + 1)::text, 5, '0')`
	}
	return `printf('%05d', x % 10000 + 1)`
}

// BenchmarkAdminAtScale measures the median and p99 of the Active users
// page (first page, a search, the last page), GET /api/v1/users and the
// Rollout page over 1 000 000 audit events, on SQLite and PostgreSQL:
//
//	go run ./integration/runtests -no-install -- -run '^$' -bench AdminAtScale -benchtime 1x ./proxy/api/
func BenchmarkAdminAtScale(b *testing.B) {
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		b.Run(driver, func(b *testing.B) {
			st, dsn := openBenchStore(b, driver)
			seed(b, driver, dsn)
			ctx := context.Background()
			if _, err := st.AddUser(ctx, "admin", store.MFAEnforced); err != nil {
				b.Fatal(err)
			}
			if err := st.SetAdmin(ctx, "admin", true); err != nil {
				b.Fatal(err)
			}
			if err := st.SetTOTP(ctx, "admin", "JBSWY3DPEHPK3PXP"); err != nil {
				b.Fatal(err)
			}
			ops := account.NewAdmin(account.AdminOptions{Store: st})
			pub, _ := url.Parse("http://localhost")
			pages, err := admin.New(admin.Options{Ops: ops, Sessions: signedIn{}, PublicURL: pub,
				Now: func() time.Time { return time.Date(2026, 12, 20, 0, 0, 0, 0, time.UTC) }})
			if err != nil {
				b.Fatal(err)
			}
			engine := policy.New(policy.Options{Store: st, FailureDelay: -1, TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
			a, err := api.New(api.Options{Ops: ops, Tokens: api.EngineTokens{Engine: engine, Check: ops}})
			if err != nil {
				b.Fatal(err)
			}
			_, token, err := ops.CreateToken(ctx, account.Actor{Kind: "cli"}, "bench", true, nil)
			if err != nil {
				b.Fatal(err)
			}
			mux := http.NewServeMux()
			mux.Handle("/admin/", pages)
			mux.Handle("/api/v1/", a)
			srv := httptest.NewServer(mux)
			defer srv.Close()
			// The seeded primary-password logins of enabled users are
			// what the rollout page reports: check it finds them.
			if ro, err := st.Rollout(ctx, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)); err != nil || len(ro) < 333 {
				b.Fatalf("Rollout over the seeded events = %d rows, %v; want at least one per enabled user with such logins (333)", len(ro), err)
			}
			for _, c := range []struct{ name, path string }{
				{"users-first", "/admin/users"},
				{"users-search", "/admin/users?search=user0424"},
				{"users-last", "/admin/users?after=user09950"},
				{"api-users", "/api/v1/users?limit=50"},
				{"api-users-search", "/api/v1/users?search=0424"},
				{"rollout", "/admin/rollout?days=30"},
			} {
				n := 200
				if c.name == "rollout" {
					n = 20
				}
				var took []time.Duration
				for range n {
					req, _ := http.NewRequest("GET", srv.URL+c.path, nil)
					req.Header.Set("Authorization", "Bearer "+token)
					start := time.Now()
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					took = append(took, time.Since(start))
					if resp.StatusCode != 200 {
						b.Fatalf("%s: %d", c.path, resp.StatusCode)
					}
				}
				slices.Sort(took)
				med, p99 := took[len(took)/2], took[len(took)*99/100]
				b.ReportMetric(float64(med.Microseconds())/1000, c.name+"-median-ms")
				b.ReportMetric(float64(p99.Microseconds())/1000, c.name+"-p99-ms")
				b.Logf("%s %s: median %v, p99 %v (%d requests)", driver, c.name, med, p99, n)
			}
		})
	}
}
