package smtpfront_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/passgate/passgate/backends/smtpupstream"
	"github.com/passgate/passgate/proxy/smtpfront"
)

// mta is an upstream that answers as Postfix does where it matters to
// the tests: lines end at LF, a MAIL inside a transaction is refused as
// nested, and DATA ends at a line that is exactly ".". It records every
// command line and every message, and is reached through the real
// smtpupstream client (go-smtp's), so the tests see the lines passgate
// really writes.
type mta struct {
	ln   net.Listener
	mu   sync.Mutex
	cmds []string
	msgs []string
	// refuseData refuses the next DATA command with 554, and keeps the
	// transaction open, as Postfix does after a smtpd_data_restrictions
	// reject.
	refuseData bool
}

func newMTA(t *testing.T) *mta {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &mta{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); u.serve(c) }()
		}
	}()
	return u
}

func (u *mta) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	w := func(s string) { _, _ = io.WriteString(c, s) }
	w("220 mta.test ESMTP\r\n")
	inTx := false
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimSuffix(strings.TrimSuffix(l, "\n"), "\r")
		u.mu.Lock()
		u.cmds = append(u.cmds, l)
		u.mu.Unlock()
		verb, _, _ := strings.Cut(l, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			w("250-mta.test\r\n250-XCLIENT LOGIN ADDR PORT NAME HELO\r\n250-PIPELINING\r\n250-SIZE 100000000\r\n250-DSN\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
		case "XCLIENT":
			w("220 mta.test ESMTP\r\n")
		case "MAIL":
			if inTx {
				w("503 5.5.1 Error: nested MAIL command\r\n")
				continue
			}
			inTx = true
			w("250 2.1.0 Ok\r\n")
		case "RSET":
			inTx = false
			w("250 2.0.0 Ok\r\n")
		case "DATA":
			u.mu.Lock()
			refuse := u.refuseData
			u.refuseData = false
			u.mu.Unlock()
			if refuse {
				w("554 5.7.1 <DATA>: Data command rejected: Multi-recipient bounce\r\n")
				continue
			}
			inTx = false
			w("354 End data with <CR><LF>.<CR><LF>\r\n")
			var msg strings.Builder
			for {
				dl, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if strings.TrimSuffix(strings.TrimSuffix(dl, "\n"), "\r") == "." {
					break
				}
				msg.WriteString(strings.TrimPrefix(dl, "."))
			}
			u.mu.Lock()
			u.msgs = append(u.msgs, msg.String())
			u.mu.Unlock()
			w("250 2.0.0 Ok: queued\r\n")
		case "QUIT":
			w("221 2.0.0 Bye\r\n")
			return
		default:
			w("250 2.0.0 Ok\r\n")
		}
	}
}

// commands returns the command lines received so far that start with
// one of verbs (all of them without verbs).
func (u *mta) commands(verbs ...string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, c := range u.cmds {
		if len(verbs) == 0 {
			out = append(out, c)
			continue
		}
		for _, v := range verbs {
			if strings.HasPrefix(strings.ToUpper(c), v) {
				out = append(out, c)
			}
		}
	}
	return out
}

func (u *mta) messages() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.msgs...)
}

// upstreamAdapter is cmd/passgate's wiring of smtpupstream to smtpfront.
type upstreamAdapter struct{ c *smtpupstream.Client }

func (a upstreamAdapter) Dial(ctx context.Context, client netip.AddrPort) (smtpfront.PendingLogin, error) {
	p, err := a.c.Dial(ctx, client)
	if err != nil {
		return nil, err
	}
	return pendingAdapter{p}, nil
}

type pendingAdapter struct{ p *smtpupstream.Pending }

func (p pendingAdapter) Login(ctx context.Context, r smtpfront.LoginRequest) (smtpfront.UpstreamSession, error) {
	s, err := p.p.Login(ctx, r.User, smtpupstream.Password(r.Password), r.Helo)
	if errors.Is(err, smtpupstream.ErrAuthRefused) {
		return nil, fmt.Errorf("%w: %w", smtpfront.ErrLoginRefused, err)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (p pendingAdapter) Close() error { return p.p.Close() }

// newMTAFixture is a fixture whose upstream is an mta reached through
// smtpupstream (XCLIENT login).
func newMTAFixture(t *testing.T, mod func(*smtpfront.Options)) (*fixture, *mta) {
	t.Helper()
	u := newMTA(t)
	cl, err := smtpupstream.New(smtpupstream.Options{Addresses: []string{u.ln.Addr().String()}, TLS: smtpupstream.TLSNone,
		Login: smtpupstream.LoginXClient, ForwardClient: smtpupstream.ForwardXClient})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	f := newFixture(t, func(o *smtpfront.Options) {
		o.Upstream = upstreamAdapter{cl}
		if mod != nil {
			mod(o)
		}
	})
	return f, u
}
