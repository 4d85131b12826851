package verify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
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
	var errs []error
	for _, addr := range v.Addresses {
		err := v.try(ctx, addr, user, password)
		if err == nil || errors.Is(err, ErrRefused) {
			return err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("verify: imap: no upstream answered (imap.upstream.addresses): %w", errors.Join(errs...))
}

func (v *IMAP) try(ctx context.Context, addr, user, password string) error {
	timeout := v.DialTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	// Past Dovecot's longest delay for an address that failed recently
	// (15 s), as the IMAP upstream's own login bound.
	deadline := time.Now().Add(timeout + 25*time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	tc := v.TLSConfig
	if tc == nil {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tc = tc.Clone()
	if tc.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			tc.ServerName = host
		}
	}
	opts := &imapclient.Options{TLSConfig: tc}
	var c *imapclient.Client
	switch v.TLS {
	case "implicit":
		tlsConn := tls.Client(conn, tc)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("TLS with %s: %w", addr, err)
		}
		c = imapclient.New(tlsConn, opts)
	case "starttls":
		c, err = imapclient.NewStartTLS(conn, opts)
		if err != nil {
			return fmt.Errorf("STARTTLS with %s: %w", addr, err)
		}
	default:
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
