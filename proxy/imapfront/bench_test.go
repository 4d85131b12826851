package imapfront

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"testing"
)

// BenchmarkLogin measures one whole session through the front against the
// in-process fake upstream: connect, greeting, LOGIN, relayed LOGOUT. It
// shows the front's own cost per login (the decision and the upstream are
// fakes that answer at once).
func BenchmarkLogin(b *testing.B) {
	for _, mode := range []string{"plain-trusted", "implicit-tls"} {
		b.Run(mode, func(b *testing.B) {
			ts := startServer(b, func(o *Options) { o.ImplicitTLS = mode == "implicit-tls" })
			ts.dec.set(func(f *fakeDecider) { f.trusted = true })
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var c net.Conn
				var err error
				if mode == "implicit-tls" {
					c, err = tls.Dial("tcp", ts.addr, ts.clientTLS)
				} else {
					c, err = net.Dial("tcp", ts.addr)
				}
				if err != nil {
					b.Fatal(err)
				}
				br := bufio.NewReader(c)
				if _, err := br.ReadString('\n'); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write([]byte("a LOGIN bob " + primaryPass + "\r\nb LOGOUT\r\n")); err != nil {
					b.Fatal(err)
				}
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						b.Fatal(err)
					}
					if strings.HasPrefix(l, "b OK") {
						break
					}
				}
				c.Close()
			}
		})
	}
}
