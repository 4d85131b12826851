package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// readyz returns the status code of passgate's /readyz (0 when it does
// not answer).
func readyz(addr string) int {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestFailoverToPromotedStandby runs passgate on a DSN that names a
// standby and its primary (PostgreSQL 15, synchronous streaming
// replication), serving IMAP logins in a loop while the primary is
// stopped with -m immediate and the standby promoted. passgate connects
// only to the writable server; during the gap logins get the temporary
// failure (never the wrong-password reply) and /readyz 503; after the
// promotion logins work again without a restart, an app password
// created and a deletion confirmed before the crash both hold, and
// revocation reaches a live session through the new primary.
func TestFailoverToPromotedStandby(t *testing.T) {
	ctx := context.Background()
	pair, err := testenv.StartReplicatedPostgres(ctx)
	if err != nil {
		t.Fatalf("start a primary and a synchronous standby: %v", err)
	}
	t.Cleanup(pair.Stop)
	if _, err := testenv.CreateDatabase(ctx, pair.Primary.DSN("postgres"), "passgate_failover"); err != nil {
		t.Fatal(err)
	}
	p := startPassgate(t, passgateConfig{postgresDSN: pair.DSN("passgate_failover"), metrics: true})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "desktop")
	if got := p.rawLoginFrom(t, "127.0.0.81", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("login before the failover: %q", got)
	}
	// Acknowledged before the crash: an app password shown to its user,
	// and a deletion confirmed.
	var created struct {
		ID       int64  `json:"id"`
		Password string `json:"password"`
	}
	if out := p.admin(t, "app-password", "create", "alice", "--label", "phone", "--json"); json.Unmarshal([]byte(out), &created) != nil || created.Password == "" {
		t.Fatalf("app-password create --json printed %q", out)
	}
	shown := created.Password
	gone := p.appPassword(t, "alice", "old-laptop")
	p.admin(t, "app-password", "delete", "alice", "--label", "old-laptop")

	// Logins in a loop through the whole failover; every reply is kept.
	type reply struct {
		at   time.Time
		line string
	}
	var (
		mu      sync.Mutex
		replies []reply
	)
	loopCtx, stopLoop := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for loopCtx.Err() == nil {
			line, err := p.loginReply("127.0.0.82", "alice", pw)
			if err != nil {
				line = "error: " + err.Error() // reported below as a reply that is not allowed
			}
			mu.Lock()
			replies = append(replies, reply{time.Now(), strings.TrimSpace(line)})
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { stopLoop(); <-loopDone }()
	lastReply := func() reply {
		mu.Lock()
		defer mu.Unlock()
		if len(replies) == 0 {
			return reply{}
		}
		return replies[len(replies)-1]
	}
	waitReply := func(what string, after time.Time, ok func(string) bool) reply {
		t.Helper()
		var r reply
		if !eventually(patience, func() bool { r = lastReply(); return r.at.After(after) && ok(r.line) }) {
			t.Fatalf("%s: last login reply %q", what, r.line)
		}
		return r
	}
	waitReply("a login before the crash", time.Now(), func(l string) bool { return strings.HasPrefix(l, "a OK") })

	crash := time.Now()
	if err := pair.Primary.StopImmediate(ctx); err != nil {
		t.Fatal(err)
	}
	waitReply("logins with the primary down", crash, func(l string) bool { return strings.HasPrefix(l, "a NO [UNAVAILABLE]") })
	if !eventually(patience, func() bool { return readyz(p.metrics) == http.StatusServiceUnavailable }) {
		t.Fatalf("/readyz with the primary down: %d, want 503", readyz(p.metrics))
	}

	promote := time.Now()
	if err := pair.Standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	first := waitReply("logins after the promotion", promoted, func(l string) bool { return strings.HasPrefix(l, "a OK") })
	t.Logf("failover: primary stopped at +0, pg_ctl promote returned at +%v, first login OK at +%v (%v after the promotion)",
		promoted.Sub(crash).Round(time.Millisecond), first.at.Sub(crash).Round(time.Millisecond), first.at.Sub(promote).Round(time.Millisecond))
	if !eventually(patience, func() bool { return readyz(p.metrics) == http.StatusOK }) {
		t.Errorf("/readyz after the promotion: %d, want 200", readyz(p.metrics))
	}
	stopLoop()
	<-loopDone
	mu.Lock()
	var unavailable int
	for _, r := range replies {
		switch {
		case strings.HasPrefix(r.line, "a OK"):
		case strings.HasPrefix(r.line, "a NO [UNAVAILABLE]"):
			unavailable++
		default:
			t.Errorf("login reply during the failover at +%v: %q, want a OK or a NO [UNAVAILABLE]", r.at.Sub(crash).Round(time.Millisecond), r.line)
		}
	}
	t.Logf("%d logins in the loop, %d temporary failures", len(replies), unavailable)
	mu.Unlock()

	// Nothing acknowledged before the crash was lost.
	if got := p.rawLoginFrom(t, "127.0.0.83", "alice", shown); !strings.HasPrefix(got, "a OK") {
		t.Errorf("the app password created before the crash: %q, want a OK", got)
	}
	if got := p.rawLoginFrom(t, "127.0.0.83", "alice", gone); got != "a "+uniformFailure+"\r\n" {
		t.Errorf("the app password deleted before the crash: %q, want the uniform failure", got)
	}
	// Revocation reaches a live session through the new primary: the
	// notification listener, on the same multi-host DSN, listens again
	// on the promoted standby, and the deletion is announced there (the
	// 500 ms polling would close the session too, so the announcement in
	// the log is what shows the listener at work).
	if !eventually(patience, func() bool { return strings.Contains(p.out.String(), `"msg":"revocation notifications resumed"`) }) {
		t.Fatalf("the revocation listener did not resume after the promotion:\n%s", tail(p.out.String(), 40))
	}
	c := p.dial(t, false, "127.0.0.84", nil)
	if err := c.Login("alice", shown).Wait(); err != nil {
		t.Fatalf("LOGIN after the failover: %v", err)
	}
	p.admin(t, "app-password", "delete", "alice", "--label", "phone")
	select {
	case <-c.Closed():
	case <-time.After(patience):
		t.Errorf("the session of an app password deleted after the failover is still open after %v", patience)
	}
	announced := regexp.MustCompile(`"msg":"app password deletion announced"[^\n]*"app_password_id":` + strconv.FormatInt(created.ID, 10) + `[,}]`)
	if !eventually(patience, func() bool { return announced.MatchString(p.out.String()) }) {
		t.Errorf("the deletion of app password %d after the failover was not announced by the new primary (LISTEN/NOTIFY):\n%s", created.ID, tail(p.out.String(), 40))
	}
}
