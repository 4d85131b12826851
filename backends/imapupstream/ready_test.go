package imapupstream

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeIMAP is an upstream for many connections: it greets, answers ID,
// CAPABILITY and AUTHENTICATE PLAIN (OK), and records the lines each
// connection sent and whether the client closed it.
type fakeIMAP struct {
	addr string

	mu    sync.Mutex
	conns []*fakeConn
	wg    sync.WaitGroup
}

type fakeConn struct {
	c      net.Conn
	lines  []string
	closed bool
}

func startFakeIMAP(t *testing.T) *fakeIMAP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIMAP{addr: ln.Addr().String()}
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fc := &fakeConn{c: c}
			f.mu.Lock()
			f.conns = append(f.conns, fc)
			f.mu.Unlock()
			f.wg.Add(1)
			go f.serve(fc)
		}
	}()
	return f
}

func (f *fakeIMAP) serve(fc *fakeConn) {
	defer f.wg.Done()
	io.WriteString(fc.c, "* OK [CAPABILITY IMAP4rev1 SASL-IR ID] ready\r\n")
	r := bufio.NewReader(fc.c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			f.mu.Lock()
			fc.closed = true
			f.mu.Unlock()
			return
		}
		line = strings.TrimRight(line, "\r\n")
		f.mu.Lock()
		fc.lines = append(fc.lines, line)
		f.mu.Unlock()
		tag, rest, _ := strings.Cut(line, " ")
		switch {
		case strings.HasPrefix(rest, "ID "):
			io.WriteString(fc.c, "* ID NIL\r\n"+tag+" OK ID done\r\n")
		case strings.HasPrefix(rest, "AUTHENTICATE "):
			io.WriteString(fc.c, tag+" OK Logged in\r\n")
		default:
			io.WriteString(fc.c, tag+" BAD what\r\n")
		}
	}
}

// snapshot returns each connection's lines and whether it was closed.
func (f *fakeIMAP) snapshot() (lines [][]string, closed []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		lines = append(lines, append([]string(nil), c.lines...))
		closed = append(closed, c.closed)
	}
	return lines, closed
}

// waitFake polls cond on the fake's state for up to patience.
func waitFake(t *testing.T, f *fakeIMAP, what string, cond func(lines [][]string, closed []bool) bool) {
	t.Helper()
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		if cond(f.snapshot()) {
			return
		}
		if time.Now().After(deadline) {
			lines, closed := f.snapshot()
			t.Fatalf("timed out waiting for %s: lines %q, closed %v", what, lines, closed)
		}
	}
}

// TestReadyConnections: with Options.Ready, a login takes a connection
// opened ahead of it, which carried nothing before the hand-out and then
// gets the client's ID and the login; the connection taken is replaced.
func TestReadyConnections(t *testing.T) {
	f := startFakeIMAP(t)
	u, err := New(Options{Addresses: []string{f.addr}, MasterUser: "passgate", MasterPassword: "m-pw", ForwardClient: ForwardID, Ready: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	login := func(client string) {
		t.Helper()
		p, err := u.Open(context.Background(), netip.MustParseAddrPort(client), nil)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		conn, _, err := p.Login(context.Background(), "alice", "")
		if err != nil {
			t.Fatalf("Login: %v", err)
		}
		conn.Close()
	}
	// The first login opens its own connection (none is ready yet), and
	// one more is opened for the next login.
	login("192.0.2.1:1001")
	waitReady(t, u, 1)
	lines, _ := f.snapshot()
	if len(lines) != 2 {
		t.Fatalf("%d connections, want the login's own and a ready one", len(lines))
	}
	r := 0 // the ready one: opened at the same time as the login's own
	if len(lines[0]) > 0 {
		r = 1
	}
	if len(lines[r]) != 0 {
		t.Fatalf("the ready connection got %q before any login", lines[r])
	}
	// The second login takes it; a third connection is opened.
	login("192.0.2.2:1002")
	waitFake(t, f, "the ready connection used, and replaced", func(lines [][]string, _ []bool) bool {
		return len(lines) == 3 && len(lines[r]) == 2
	})
	lines, _ = f.snapshot()
	if !strings.Contains(lines[r][0], `"x-originating-ip" "192.0.2.2" "x-originating-port" "1002"`) {
		t.Errorf("the ready connection's first command %q does not forward the second client", lines[r][0])
	}
	if !strings.Contains(lines[r][1], "AUTHENTICATE PLAIN") {
		t.Errorf("the ready connection's second command %q is not the login", lines[r][1])
	}
	waitReady(t, u, 1)
	// Close closes the ready one, unused.
	u.Close()
	waitFake(t, f, "the ready connection closed", func(lines [][]string, closed []bool) bool { return len(closed) == 3 && closed[2] })
	if lines, _ := f.snapshot(); len(lines[2]) != 0 {
		t.Errorf("the unused ready connection got %q", lines[2])
	}
	// After Close, logins open their own connections.
	login("192.0.2.3:1003")
	if lines, _ := f.snapshot(); len(lines) != 4 {
		t.Errorf("%d connections after a login past Close, want 4", len(lines))
	}
}

// TestReadyConnectionsExpire: a ready connection left unused is closed
// without a word after ReadyIdle.
func TestReadyConnectionsExpire(t *testing.T) {
	f := startFakeIMAP(t)
	u, err := New(Options{Addresses: []string{f.addr}, Login: LoginPassthrough, ForwardClient: ForwardID, Ready: 2, ReadyIdle: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	p, err := u.Open(context.Background(), netip.MustParseAddrPort("192.0.2.1:1001"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	// The login's own connection and the two ready ones (opened at the
	// same time: in any order), all closed.
	waitFake(t, f, "two ready connections opened and closed unused", func(_ [][]string, closed []bool) bool {
		return len(closed) == 3 && closed[0] && closed[1] && closed[2]
	})
	// None got a command: the pending connection, closed without a
	// login, never sent the ID queued for its login either.
	for i, l := range func() [][]string { l, _ := f.snapshot(); return l }() {
		if len(l) > 0 {
			t.Errorf("connection %d got %q, want nothing", i, l)
		}
	}
}

// TestReadyConnectionDropped: a ready connection that the upstream
// dropped while it waited is passed over (usable) or, when the drop is
// not seen yet, fails at login; either way the login goes on with a new
// connection to the same address.
func TestReadyConnectionDropped(t *testing.T) {
	f := startFakeIMAP(t)
	u, err := New(Options{Addresses: []string{f.addr}, MasterUser: "passgate", MasterPassword: "m-pw", ForwardClient: ForwardNone, Ready: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	p, err := u.Open(context.Background(), netip.AddrPort{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	waitReady(t, u, 1)
	f.mu.Lock()
	f.conns[1].c.Close() // the upstream drops it
	f.mu.Unlock()
	p, err = u.Open(context.Background(), netip.AddrPort{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, okText, err := p.Login(context.Background(), "alice", "")
	if err != nil {
		t.Fatalf("Login after the ready connection was dropped: %v", err)
	}
	conn.Close()
	if okText != "OK Logged in" {
		t.Errorf("okText %q", okText)
	}
}

// TestReadyConnectionUsable: a ready connection is handed out only while
// the upstream has neither spoken on it nor closed it (on Linux, where
// dial.Quiet can tell).
func TestReadyConnectionUsable(t *testing.T) {
	tests := []struct {
		name   string
		server func(net.Conn)
		want   bool
	}{
		{"ok/silent", func(net.Conn) {}, true},
		{"fail/bye", func(c net.Conn) { io.WriteString(c, "* BYE Disconnected for inactivity.\r\n") }, false},
		{"fail/closed", func(c net.Conn) { c.Close() }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeIMAP(t)
			u, err := New(Options{Addresses: []string{f.addr}, MasterUser: "passgate", MasterPassword: "m-pw"})
			if err != nil {
				t.Fatal(err)
			}
			s, raw, err := u.connectAt(context.Background(), f.addr, netip.AddrPort{})
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			c := &readyConn{s: s, raw: raw}
			f.mu.Lock()
			server := f.conns[0].c
			f.mu.Unlock()
			tc.server(server)
			want := tc.want || runtime.GOOS != "linux"
			got := usable(c)
			// What the server did may take a moment to arrive.
			for deadline := time.Now().Add(patience); got != want && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				got = usable(c)
			}
			if got != want {
				t.Fatalf("usable = %v, want %v", got, want)
			}
		})
	}
}

// TestNoReadyConnectionsWithProxyHeader: with forward_client "proxy"
// every connection is made for its client, so none is kept ready.
func TestNoReadyConnectionsWithProxyHeader(t *testing.T) {
	u, err := New(Options{Addresses: []string{"127.0.0.1:1"}, Login: LoginPassthrough, ForwardClient: ForwardProxy, Ready: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if u.ready != nil {
		t.Error("ready connections kept with forward_client proxy")
	}
}

// waitReady waits until u holds n ready connections.
func waitReady(t *testing.T, u *Upstream, n int) {
	t.Helper()
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		got := u.ready.Len()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d ready connections after %v, want %d", got, patience, n)
		}
	}
}

// TestOpenReady: OpenReady hands out a ready connection at once, sending
// nothing on it (the client's ID goes out with the login), and reports
// false without dialling when none is ready or there is no ready set.
func TestOpenReady(t *testing.T) {
	tests := []struct {
		name  string
		ready int
		want  bool
	}{
		{name: "ok/one-ready", ready: 1, want: true},
		{name: "none/no-ready-set", ready: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeIMAP(t)
			u, err := New(Options{Addresses: []string{f.addr}, MasterUser: "passgate", MasterPassword: "m-pw", ForwardClient: ForwardID, Ready: tc.ready})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			client := netip.MustParseAddrPort("192.0.2.7:1007")
			if tc.ready > 0 {
				// None ready before the first take, which starts
				// opening one.
				if p, ok := u.OpenReady(context.Background(), client, nil); ok || p != nil {
					t.Fatalf("OpenReady before any connection is ready: %v, %v", p, ok)
				}
				waitReady(t, u, tc.ready)
			}
			p, ok := u.OpenReady(context.Background(), client, []string{"name", "Thunderbird"})
			if ok != tc.want {
				t.Fatalf("OpenReady: ok %v, want %v", ok, tc.want)
			}
			if !ok {
				if lines, _ := f.snapshot(); len(lines) != 0 {
					t.Errorf("OpenReady without a ready connection dialled: %q", lines)
				}
				return
			}
			if lines, _ := f.snapshot(); len(lines[0]) != 0 {
				t.Errorf("the ready connection got %q before the login", lines[0])
			}
			conn, _, err := p.Login(context.Background(), "alice", "")
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			conn.Close()
			// The ID, then the login, in one write.
			lines, _ := f.snapshot()
			if len(lines[0]) != 2 {
				t.Fatalf("the ready connection got %q, want the ID and the login", lines[0])
			}
			if l := lines[0][0]; !strings.Contains(l, `ID ("x-originating-ip" "192.0.2.7"`) || !strings.Contains(l, `"name" "Thunderbird"`) {
				t.Errorf("the ready connection's first command %q is not the client's ID", l)
			}
			if l := lines[0][1]; !strings.Contains(l, "AUTHENTICATE PLAIN") {
				t.Errorf("the ready connection's second command %q is not the login", l)
			}
		})
	}
}
