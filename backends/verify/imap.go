package verify

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// IMAP verifies passwords by logging in to an IMAP server with them
// (web.verify: imap): the upstream of imap.upstream, with the user's own
// password, then LOGOUT. cmd wires Login to the login that the IMAP
// listener makes in passthrough mode, so the address of the person
// signing in reaches the server as imap.upstream.forward_client says (IMAP
// ID or PROXY header), and the server's own protections, such as
// Dovecot's delay after failed logins, count that person rather than
// passgate.
type IMAP struct {
	// Login logs in as user with password, forwarding client, and
	// returns the logged-in connection; an error matching ErrRefused
	// when the server refused the credentials, any other when it could
	// not tell.
	Login func(ctx context.Context, user, password string, client netip.AddrPort) (net.Conn, error)
}

// logoutBound bounds the LOGOUT after a successful check; the answer is
// not needed, so a server that does not reply costs no more than this.
const logoutBound = 2 * time.Second

// Verify implements Verifier.
func (v *IMAP) Verify(ctx context.Context, user, password string, client netip.AddrPort) error {
	// An empty password could make an upstream log in as its master user
	// on the user's behalf; it is never right.
	if len(password) > MaxPasswordBytes || password == "" || user == "" {
		return ErrRefused
	}
	conn, err := v.Login(ctx, user, password, client)
	if err != nil {
		return fmt.Errorf("verify: imap: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(logoutBound))
	_, _ = io.WriteString(conn, "v LOGOUT\r\n")
	return nil
}
