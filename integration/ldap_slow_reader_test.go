package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/passgate/passgate/backends/store"
)

// ldapMessage encodes an LDAPMessage: id and protocolOp op.
func ldapMessage(id int64, op *ber.Packet) []byte {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, ""))
	p.AppendChild(op)
	return p.Bytes()
}

func ldapBindOp(dn, password string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 0, nil, "")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), ""))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, ""))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, password, ""))
	return op
}

// ldapBaseSearchOp reads the entry dn (scope base, every attribute).
func ldapBaseSearchOp(dn string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 3, nil, "")
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, ""))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 7, "objectClass", ""))
	op.AppendChild(ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, ""))
	return op
}

// tcpEstablished counts this machine's established IPv4 TCP sockets that
// match: local port lport (0: any) and remote port rport (0: any), and
// sums their send queues.
func tcpEstablished(t *testing.T, lport, rport int) (n, txQueue int) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || f[3] != "01" {
			continue
		}
		port := func(addr string) int {
			_, hex, _ := strings.Cut(addr, ":")
			v, _ := strconv.ParseInt(hex, 16, 32)
			return int(v)
		}
		if (lport != 0 && port(f[1]) != lport) || (rport != 0 && port(f[2]) != rport) {
			continue
		}
		tx, _, _ := strings.Cut(f[4], ":")
		v, _ := strconv.ParseInt(tx, 16, 64)
		n++
		txQueue += int(v)
	}
	return n, txQueue
}

// portNumber is the port of addr (host:port, or an ldap:// or ldaps:// URL).
func portNumber(t *testing.T, addr string) int {
	t.Helper()
	n, err := strconv.Atoi(portOf(t, strings.TrimPrefix(strings.TrimPrefix(addr, "ldap://"), "ldaps://")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// slowReader is an LDAPS client that binds, then sends searches with
// large answers, as fast as passgate takes them, and never reads one.
type slowReader struct {
	conn    *tls.Conn
	port    int        // its local port
	written chan int   // searches written so far, after each write
	ended   chan error // the write error that ended it (passgate closed it)
}

func startSlowReader(t *testing.T, g *ldapGate, dn, password, entry string) *slowReader {
	t.Helper()
	d := net.Dialer{Timeout: patience, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		// A small receive window: passgate's writes block after little.
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := tls.DialWithDialer(&d, "tcp", g.tlsAddr, ldapEnv(t).certs.ClientTLS())
	if err != nil {
		t.Fatalf("LDAPS to passgate: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetReadDeadline(time.Now().Add(patience))
	if _, err := conn.Write(ldapMessage(1, ldapBindOp(dn, password))); err != nil {
		t.Fatal(err)
	}
	resp, err := ber.ReadPacket(bufio.NewReader(conn))
	if err != nil || len(resp.Children) < 2 || len(resp.Children[1].Children) < 1 || resp.Children[1].Children[0].Value != int64(0) {
		t.Fatalf("bind of the slow reader: %v (%v)", resp, err)
	}
	s := &slowReader{conn: conn, port: portNumber(t, conn.LocalAddr().String()), written: make(chan int, 1), ended: make(chan error, 1)}
	go func() {
		for id := int64(2); ; id++ {
			if _, err := conn.Write(ldapMessage(id, ldapBaseSearchOp(entry))); err != nil {
				s.ended <- err
				return
			}
			select {
			case <-s.written:
			default:
			}
			s.written <- int(id - 1)
		}
	}()
	return s
}

// waitStalled waits until passgate holds at least 256 KiB of answers it
// cannot send to the slow reader (its socket's send queue, which only
// grows while the client does not read).
func (s *slowReader) waitStalled(t *testing.T, g *ldapGate) {
	t.Helper()
	gport := portNumber(t, g.tlsAddr)
	for deadline := time.Now().Add(2 * patience); ; time.Sleep(20 * time.Millisecond) {
		if _, tx := tcpEstablished(t, gport, s.port); tx >= 256<<10 {
			return
		}
		select {
		case err := <-s.ended:
			t.Fatalf("passgate closed the slow reader before its writes stalled: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			_, tx := tcpEstablished(t, gport, s.port)
			t.Fatalf("passgate's send queue to the slow reader holds %d bytes after %v, want a stall", tx, 2*patience)
		}
	}
}

// addBulkEntry adds an entry of about 100 KiB that every bound user may
// read, for the test's life.
func addBulkEntry(t *testing.T) string {
	t.Helper()
	sl := ldapEnv(t).slapd
	l, err := ldap.DialURL(sl.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Bind(sl.AdminDN, sl.AdminPassword); err != nil {
		t.Fatal(err)
	}
	dn := fmt.Sprintf("ou=bulk-%d,%s", time.Now().UnixNano(), sl.BaseDN)
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", []string{"organizationalUnit"})
	add.Attribute("ou", []string{strings.SplitN(strings.TrimPrefix(dn, "ou="), ",", 2)[0]})
	var streets []string
	for i := range 100 {
		streets = append(streets, fmt.Sprintf("%04d %s", i, strings.Repeat("s", 1000)))
	}
	add.Attribute("street", streets)
	if err := l.Add(add); err != nil {
		t.Fatalf("add the bulk entry: %v", err)
	}
	t.Cleanup(func() {
		l, err := ldap.DialURL(sl.URL)
		if err != nil {
			t.Error(err)
			return
		}
		defer l.Close()
		if err := l.Bind(sl.AdminDN, sl.AdminPassword); err == nil {
			l.Del(ldap.NewDelRequest(dn, nil))
		}
	})
	return dn
}

// TestLDAPSlowReader: a client that binds, then sends searches whose
// answers are large and never reads them, makes passgate's writes to it
// block (in the upstream session's reader, which writes what it holds
// before it waits for the directory). Meanwhile another client binds and
// searches as usual. With a short WriteTimeout the slow reader is closed
// by the write deadline and its upstream connection freed; with a long
// one, Shutdown and then Close end everything at once, not when the
// write deadline would.
func TestLDAPSlowReader(t *testing.T) {
	e := ldapEnv(t)
	entry := addBulkEntry(t)
	slapdPort := portNumber(t, e.slapd.URL)
	for _, tc := range []struct {
		name         string
		writeTimeout time.Duration
	}{
		{"closed-by-write-deadline", 2 * time.Second},
		{"shutdown-does-not-wait-for-the-write", 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := startLDAPGate(t, ldapGateOptions{writeTimeout: tc.writeTimeout})
			g.setMFA(t, "alice", store.MFAEnforced)
			g.setMFA(t, "bob", store.MFAEnforced)
			slow := startSlowReader(t, g, e.slapd.UserDN("alice"), g.appPassword(t, "alice", "slow"), entry)
			slow.waitStalled(t, g)

			// Another client is served while the slow reader's write blocks.
			other := dialGate(t, g)
			if err := other.Bind(e.slapd.UserDN("bob"), g.appPassword(t, "bob", "other")); err != nil {
				t.Fatalf("bind of another client during the stall: %v", err)
			}
			for i := range 3 {
				res, err := other.Search(ldap.NewSearchRequest(entry, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", nil, nil))
				if err != nil || len(res.Entries) != 1 {
					t.Fatalf("search %d of another client during the stall: %v", i, err)
				}
			}

			switch tc.writeTimeout < time.Minute {
			case true:
				select {
				case err := <-slow.ended:
					t.Logf("slow reader closed: %v", err)
				case <-time.After(2 * patience):
					t.Fatalf("the slow reader is still open %v after its write stalled (WriteTimeout %v)", 2*patience, tc.writeTimeout)
				}
				other.Close()
			default:
				done := make(chan struct{})
				go func() {
					defer close(done)
					for _, s := range g.servers {
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						if err := s.Shutdown(ctx); err != nil {
							s.Close()
						}
						cancel()
					}
				}()
				select {
				case <-done:
				case <-time.After(2 * patience):
					slow.conn.Close() // lets the blocked write, and the test, end
					<-done
					t.Fatalf("Shutdown and Close did not return within %v with a write to a client blocked (WriteTimeout %v)", 2*patience, tc.writeTimeout)
				}
				select {
				case <-slow.ended:
				case <-time.After(patience):
					t.Fatal("the slow reader is still open after Close returned")
				}
			}
			// Every upstream connection is freed.
			for deadline := time.Now().Add(patience); ; time.Sleep(50 * time.Millisecond) {
				if n, _ := tcpEstablished(t, 0, slapdPort); n == 0 {
					break
				}
				if time.Now().After(deadline) {
					n, _ := tcpEstablished(t, 0, slapdPort)
					t.Fatalf("%d connections to slapd %v after the clients ended, want 0", n, patience)
				}
			}
		})
	}
}
