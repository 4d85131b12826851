package dial

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/pires/go-proxyproto"

	"github.com/passgate/passgate/backends/sockwire"
)

// TestProxyHeader: the header names the client (or passgate itself) as
// source and the upstream as destination, in the source's family.
func TestProxyHeader(t *testing.T) {
	tests := []struct {
		name   string
		client netip.AddrPort
		want   func(local netip.AddrPort) netip.AddrPort
	}{
		{"ok/ipv4-client", netip.MustParseAddrPort("198.51.100.9:4321"), nil},
		{"ok/mapped-client-unmapped", netip.MustParseAddrPort("[::ffff:198.51.100.9]:4321"), nil},
		{"ok/no-client-is-passgate", netip.AddrPort{}, func(local netip.AddrPort) netip.AddrPort { return local }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan *proxyproto.Header, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				h, _ := proxyproto.Read(bufio.NewReader(c))
				got <- h
			}()
			conn, raw, err := New(Options{Proxy: true}, 1).Dial(context.Background(), ln.Addr().String(), tc.client)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// Without implicit TLS, conn is raw read and written with raw
			// system calls where the platform has them.
			if s, ok := conn.(*sockwire.Socket); ok {
				if s.NetConn() != raw {
					t.Error("conn is a sockwire.Socket over another connection than raw")
				}
			} else if sockwire.Supported || conn != raw {
				t.Errorf("conn is a %T, want a sockwire.Socket over raw", conn)
			}
			h := <-got
			if h == nil {
				t.Fatal("no PROXY header")
			}
			src, dst, ok := h.TCPAddrs()
			want := netip.AddrPortFrom(tc.client.Addr().Unmap(), tc.client.Port())
			if tc.want != nil {
				want = tc.want(raw.LocalAddr().(*net.TCPAddr).AddrPort())
			}
			if !ok || h.Version != 2 || src.AddrPort() != want || dst.String() != ln.Addr().String() {
				t.Errorf("header %+v (src %v dst %v), want v2 from %s to %s", h, src, dst, want, ln.Addr())
			}
		})
	}
}

// TestEach: addresses are tried in order; a final error stops at once
// and comes back alone; otherwise every error is named by its address.
func TestEach(t *testing.T) {
	refused := errors.New("refused")
	tests := []struct {
		name    string
		results map[string]error
		want    string
		wantErr string
	}{
		{"ok/second-answers", map[string]error{"a": errors.New("down"), "b": nil}, "b", ""},
		{"fail/all-down", map[string]error{"a": errors.New("down"), "b": errors.New("down too")}, "", "a: down\nb: down too"},
		{"fail/refusal-is-final", map[string]error{"a": refused, "b": nil}, "", "refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tried []string
			got, err := Each(context.Background(), []string{"a", "b"}, func(addr string) (string, error) {
				tried = append(tried, addr)
				return addr, tc.results[addr]
			}, func(err error) bool { return errors.Is(err, refused) })
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Each = %q, %v; want %q (tried %v)", got, err, tc.want, tried)
				}
				return
			}
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("Each error = %v, want %q (tried %s)", err, tc.wantErr, strings.Join(tried, ","))
			}
		})
	}
}
