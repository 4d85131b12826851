package smtpfront_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/proxy/smtpfront"
)

// countingSessions counts the sessions tracked for revocation and those
// released.
type countingSessions struct {
	mu                sync.Mutex
	tracked, released int
}

func (c *countingSessions) Track(ctx context.Context, _ int64) (context.Context, func()) {
	c.mu.Lock()
	c.tracked++
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			c.mu.Lock()
			c.released++
			c.mu.Unlock()
		})
		cancel()
	}
}

func (c *countingSessions) counts() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tracked, c.released
}

// TestStartTLSAfterAuth: STARTTLS after a plaintext AUTH (allowed on
// trusted networks) is refused with 503 5.5.1, and the session goes on
// logged in: it was tracked for revocation once and is released once
// (restarting the session under TLS kept the login state and leaked the
// first registration when the client logged in again). Before AUTH,
// STARTTLS works as usual.
func TestStartTLSAfterAuth(t *testing.T) {
	tests := []struct {
		name      string
		authFirst bool
		reply     string
		tracked   int
	}{
		{"fail/after-plaintext-auth", true, "503 5.5.1 STARTTLS not allowed after AUTH", 1},
		{"ok/before-auth", false, "220 2.0.0 Ready to start TLS", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := &countingSessions{}
			f := newFixture(t, func(o *smtpfront.Options) { o.Sessions = reg })
			f.dec.trusted = netip.MustParsePrefix("127.0.0.0/8")
			r := f.dialRaw(t, false)
			auth := "AUTH PLAIN " + b64("\x00alice\x00"+appSecret)
			if tc.authFirst {
				r.send(auth)
				r.expect("235 ")
			}
			r.send("STARTTLS")
			r.expect(tc.reply)
			if strings.HasPrefix(tc.reply, "220") {
				tlsConn := tls.Client(r.conn, f.client)
				if err := tlsConn.Handshake(); err != nil {
					t.Fatal(err)
				}
				r.conn, r.r = tlsConn, bufio.NewReader(tlsConn)
				r.send("EHLO client.test")
				r.expect("250")
			}
			r.send(auth)
			if tc.authFirst {
				r.expect("503 5.5.1 Already authenticated")
			} else {
				r.expect("235 ")
			}
			r.send("MAIL FROM:<alice@example.test>")
			r.expect("250 ")
			r.send("QUIT")
			r.expect("221 ")
			deadline := time.Now().Add(patience)
			for {
				tracked, released := reg.counts()
				if tracked == tc.tracked && released == tracked {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("tracked %d sessions, released %d; want %d and %d", tracked, released, tc.tracked, tc.tracked)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}
