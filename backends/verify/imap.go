package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/passgate/passgate/backends/imapupstream"
)

// IMAP verifies passwords by logging in to an IMAP server with them
// (web.verify: imap): the upstream of imap.upstream, with the user's own
// password, then LOGOUT. The login is the one the IMAP listener makes in
// passthrough mode, so the address of the person signing in reaches the
// server as imap.upstream.forward_client says (IMAP ID or PROXY header),
// and the server's own protections, such as Dovecot's delay after failed
// logins, count that person rather than passgate.
type IMAP struct {
	Upstream *imapupstream.Upstream
}

// logoutBound bounds the LOGOUT after a successful check; the answer is
// not needed, so a server that does not reply costs no more than this.
const logoutBound = 2 * time.Second

// Verify implements Verifier.
func (v *IMAP) Verify(ctx context.Context, user, password string, client netip.AddrPort) error {
	// An empty password would make the upstream log in as its master user
	// (imapupstream's login without a password); refuse it here.
	if len(password) > MaxPasswordBytes || password == "" || user == "" {
		return ErrRefused
	}
	conn, _, err := v.Upstream.Login(ctx, imapupstream.Request{User: user, Password: password, Client: client})
	if errors.Is(err, imapupstream.ErrRefused) {
		return ErrRefused
	}
	if err != nil {
		return fmt.Errorf("verify: imap: no upstream answered (imap.upstream.addresses): %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(logoutBound))
	_, _ = io.WriteString(conn, "v LOGOUT\r\n")
	return nil
}
