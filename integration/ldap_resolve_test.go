package integration

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/passgate/passgate/backends/ldapupstream"
)

// cutter forwards TCP connections to a server and can cut them all at
// once, as a firewall that forgets idle connections does.
type cutter struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	accept int
}

func newCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln}
	t.Cleanup(func() { ln.Close(); c.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.accept++
			c.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return c
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cn := range c.conns {
		cn.Close()
	}
	c.conns = nil
}

func (c *cutter) accepted() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.accept
}

// TestLDAPResolveKeepsOneConnection: the lookups that decide which entry
// a bind name stands for share one connection bound as the service
// account, against the real slapd; when that connection is lost, the
// next lookup opens another and still answers.
func TestLDAPResolveKeepsOneConnection(t *testing.T) {
	e := ldapEnv(t)
	cut := newCutter(t, strings.TrimPrefix(e.slapd.URL, "ldap://"))
	up, err := ldapupstream.New(ldapupstream.Options{
		URL:       "ldap://" + cut.ln.Addr().String(),
		ServiceDN: e.slapd.ServiceDN, ServicePassword: ldapupstream.Secret(e.slapd.ServicePassword),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*patience) // several lookups
	defer cancel()
	aliceDN := e.slapd.UserDN("alice")
	spelling := strings.Replace(aliceDN, "uid=", "userid=", 1)
	resolve := func(dn, want string) {
		t.Helper()
		got, found, err := up.Resolve(ctx, dn)
		if err != nil {
			t.Fatalf("Resolve(%q): %v", dn, err)
		}
		if want == "" && found {
			t.Fatalf("Resolve(%q) found %q, want no entry", dn, got)
		}
		if want != "" && (!found || !strings.EqualFold(got, want)) {
			t.Fatalf("Resolve(%q) = %q, %v; want %q", dn, got, found, want)
		}
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resolve(spelling, aliceDN)
		}()
	}
	wg.Wait()
	resolve("uid=nobody,ou=people,"+e.slapd.BaseDN, "")
	if n := cut.accepted(); n != 1 {
		t.Fatalf("21 lookups opened %d connections to the directory, want 1", n)
	}
	cut.cut()
	resolve(spelling, aliceDN)
	if n := cut.accepted(); n != 2 {
		t.Fatalf("after the connection was cut: %d connections in all, want 2", n)
	}
	up.Close()
	if _, _, err := up.Resolve(ctx, spelling); err == nil {
		t.Fatal("Resolve after Close succeeded")
	}
}
