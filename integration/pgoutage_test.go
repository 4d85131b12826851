package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// pgCutter forwards TCP to a PostgreSQL and can cut it: every connection
// is closed and new ones are refused until it is restored, as when the
// database host goes away.
type pgCutter struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
}

func newPGCutter(t *testing.T, target string) *pgCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &pgCutter{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	t.Cleanup(func() { ln.Close(); c.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go c.forward(in)
		}
	}()
	return c
}

func (c *pgCutter) forward(in net.Conn) {
	c.mu.Lock()
	if c.down {
		c.mu.Unlock()
		in.Close()
		return
	}
	c.mu.Unlock()
	out, err := net.Dial("tcp", c.target)
	if err != nil {
		in.Close()
		return
	}
	c.mu.Lock()
	c.conns[in], c.conns[out] = struct{}{}, struct{}{}
	c.mu.Unlock()
	go func() { io.Copy(out, in); out.Close(); in.Close() }()
	io.Copy(in, out)
	in.Close()
	out.Close()
}

// cut closes every forwarded connection and refuses new ones.
func (c *pgCutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = true
	for k := range c.conns {
		k.Close()
		delete(c.conns, k)
	}
}

func (c *pgCutter) restore() {
	c.mu.Lock()
	c.down = false
	c.mu.Unlock()
}

// TestPostgresOutageFailsClosed: with PostgreSQL unreachable, a login
// with the right app password and one with a wrong secret both get the
// temporary-failure reply (never allowed, never the wrong-password
// reply), /readyz answers 503; once it is back, everything works again
// without a restart.
func TestPostgresOutageFailsClosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, stopPG, err := testenv.Postgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopPG)
	name := fmt.Sprintf("passgate_outage_%d", os.Getpid())
	dsn, err := testenv.CreateDatabase(ctx, base, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.DropDatabase(context.Background(), base, name) })
	host := strings.SplitN(strings.TrimPrefix(dsn, "postgres://postgres@"), "/", 2)[0]
	cut := newPGCutter(t, host)
	p := startPassgate(t, passgateConfig{metrics: true, postgresDSN: strings.Replace(dsn, host, cut.ln.Addr().String(), 1)})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")
	ready := func() int {
		resp, err := http.Get("http://" + p.metrics + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := p.rawLoginFrom(t, "127.0.0.111", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("before the outage: %q", got)
	}
	cut.cut()
	for _, secret := range []string{pw, "wrong-secret"} {
		if got := p.rawLoginFrom(t, "127.0.0.112", "alice", secret); !strings.HasPrefix(got, "a NO [UNAVAILABLE]") {
			t.Fatalf("with PostgreSQL unreachable, secret %q: %q, want a NO [UNAVAILABLE]", secret[:5], got)
		}
	}
	if !eventually(patience, func() bool { return ready() == http.StatusServiceUnavailable }) {
		t.Fatalf("/readyz during the outage: %d, want 503", ready())
	}
	cut.restore()
	if !eventually(patience, func() bool { return ready() == http.StatusOK }) {
		t.Fatalf("/readyz after the outage: %d, want 200", ready())
	}
	if !eventually(patience, func() bool {
		return strings.HasPrefix(p.rawLoginFrom(t, "127.0.0.113", "alice", pw), "a OK")
	}) {
		t.Fatal("logins did not work again after PostgreSQL came back")
	}
}
