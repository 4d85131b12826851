package integration

import (
	"context"
	"crypto/subtle"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy/account"
	pgportal "github.com/passgate/passgate/proxy/portal"
)

// movingClock is a clock the test moves forward.
type movingClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *movingClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *movingClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// onePassword is a pgportal.SignIn for the clock test: alice's one
// password, nothing else.
type onePassword struct{ user, password string }

func (o onePassword) Password(ctx context.Context, a pgportal.Attempt) (pgportal.Account, error) {
	if a.User == o.user && subtle.ConstantTimeCompare([]byte(a.Password), []byte(o.password)) == 1 {
		return pgportal.Account{User: o.user, MFA: "enabled"}, nil
	}
	return pgportal.Account{}, pgportal.ErrRefused
}

func (o onePassword) SecondFactor(ctx context.Context, a pgportal.Attempt, check func(ctx context.Context) (bool, error)) error {
	ok, err := check(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return pgportal.ErrRefused
	}
	return nil
}

// TestPortalSessionTimeouts runs the portal in-process with a clock the
// test moves (serve has no clock to move): a session ends after
// web.session_idle without a request, and after web.session_absolute
// even when it was used all along.
func TestPortalSessionTimeouts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: "sqlite", DSN: filepath.Join(dir, "passgate.db"), KeyFile: filepath.Join(dir, "passgate.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, "alice", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	clock := &movingClock{now: time.Now()}
	srv := httptest.NewUnstartedServer(nil)
	tlsCfg, err := env.certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = tlsCfg
	srv.StartTLS()
	defer srv.Close()
	pub, _ := url.Parse("https://localhost:" + srv.URL[strings.LastIndex(srv.URL, ":")+1:])
	p, err := pgportal.New(pgportal.Options{
		PublicURL:       pub,
		SignIn:          onePassword{"alice", "alice-pw"},
		Accounts:        account.New(account.Options{Store: st, Now: clock.Now}),
		Sessions:        st,
		SessionIdle:     15 * time.Minute,
		SessionAbsolute: time.Hour,
		Now:             clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = p

	signIn := func() *http.Client {
		t.Helper()
		jar, _ := cookiejar.New(nil)
		c := webClient()
		c.Jar = jar
		form := url.Values{"username": {"alice"}, "password": {"alice-pw"}}
		req, _ := http.NewRequest("POST", pub.String()+"/signin", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", pub.String())
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("sign in: %v", err)
		}
		resp.Body.Close()
		if !signedIn(t, c, pub.String()) {
			t.Fatalf("alice is not signed in after POST /signin (%s)", resp.Status)
		}
		return c
	}

	t.Run("idle", func(t *testing.T) {
		c := signIn()
		clock.advance(14 * time.Minute)
		if !signedIn(t, c, pub.String()) {
			t.Fatalf("signed out after 14 min idle, web.session_idle is 15m")
		}
		clock.advance(16 * time.Minute)
		if signedIn(t, c, pub.String()) {
			t.Errorf("still signed in after 16 min idle, web.session_idle is 15m")
		}
	})
	t.Run("absolute", func(t *testing.T) {
		c := signIn()
		for range 5 {
			clock.advance(10 * time.Minute)
			if !signedIn(t, c, pub.String()) {
				t.Fatalf("signed out of a session used every 10 min, before web.session_absolute (1h)")
			}
		}
		clock.advance(11 * time.Minute) // 61 min after sign-in, 11 min idle
		if signedIn(t, c, pub.String()) {
			t.Errorf("still signed in 61 min after sign-in, web.session_absolute is 1h")
		}
	})
}

// signedIn reports whether GET /security-info shows a signed-in page
// (one with Sign out) to the client.
func signedIn(t *testing.T, c *http.Client, base string) bool {
	t.Helper()
	resp, err := c.Get(base + "/security-info")
	if err != nil {
		t.Fatalf("GET /security-info: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode == http.StatusOK && strings.Contains(string(body), "Sign out")
}
