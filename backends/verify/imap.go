package verify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/passgate/passgate/backends/dial"
)

// IMAP verifies passwords by logging in to an IMAP server with them
// (web.verify: imap): the upstream of imap.upstream, with the user's own
// password, then LOGOUT.
type IMAP struct {
	Addresses   []string    // host:port, tried in order until one answers
	TLS         string      // none | starttls | implicit
	TLSConfig   *tls.Config // verifies the server's certificate
	DialTimeout time.Duration
}

// Verify implements Verifier.
func (v *IMAP) Verify(ctx context.Context, user, password string) error {
	if len(password) > MaxPasswordBytes || password == "" || user == "" {
		return ErrRefused
	}
	_, err := dial.Each(ctx, v.Addresses, func(addr string) (struct{}, error) {
		return struct{}{}, v.try(ctx, addr, user, password)
	}, func(err error) bool { return errors.Is(err, ErrRefused) })
	if err == nil || errors.Is(err, ErrRefused) {
		return err
	}
	return fmt.Errorf("verify: imap: no upstream answered (imap.upstream.addresses): %w", err)
}

func (v *IMAP) try(ctx context.Context, addr, user, password string) error {
	timeout := v.DialTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	d := dial.New(dial.Options{TLS: v.TLS, TLSConfig: v.TLSConfig, Timeout: timeout}, 1)
	conn, raw, err := d.Dial(ctx, addr, netip.AddrPort{})
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	// Past Dovecot's longest delay for an address that failed recently
	// (15 s), as the IMAP upstream's own login bound; ctx's own deadline
	// cuts it short.
	stop := dial.Bound(ctx, raw, timeout+25*time.Second)
	defer stop()

	opts := &imapclient.Options{TLSConfig: d.TLSConfig(addr)}
	var c *imapclient.Client
	if v.TLS == dial.TLSStartTLS {
		if c, err = imapclient.NewStartTLS(conn, opts); err != nil {
			return fmt.Errorf("STARTTLS with %s: %w", addr, err)
		}
	} else {
		c = imapclient.New(conn, opts)
	}
	defer c.Close()
	if err := c.WaitGreeting(); err != nil {
		return fmt.Errorf("greeting of %s: %w", addr, err)
	}
	err = c.Login(user, password).Wait()
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo {
		if ie.Code == imap.ResponseCodeUnavailable || ie.Code == imap.ResponseCodeServerBug {
			return fmt.Errorf("login at %s: %w", addr, err)
		}
		return ErrRefused
	}
	if err != nil {
		return fmt.Errorf("login at %s: %w", addr, err)
	}
	_ = c.Logout().Wait()
	return nil
}
