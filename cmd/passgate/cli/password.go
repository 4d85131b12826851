package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/backends/verify"
)

// cmdUserSetPassword runs "passgate user set-password NAME": the primary
// password that the portal checks with web.verify: store, read from the
// first line of standard input (never from the command line, where other
// users could see it), stored as an argon2id hash.
func cmdUserSetPassword(ctx context.Context, e *env, args []string) int {
	f := newFlags("user set-password", "NAME [--config FILE] < password",
		"Set user NAME's primary password for the Security info portal (web.verify: store). The password is read\n"+
			"from the first line of standard input and only its argon2id hash is stored.")
	var hash string
	check := func([]string) error {
		in := e.Stdin
		if in == nil {
			in = os.Stdin
		}
		line, err := bufio.NewReader(io.LimitReader(in, verify.MaxPasswordBytes+2)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return failure{fmt.Errorf("read the password from standard input: %w", err)}
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return errors.New("no password on standard input: e.g. printf '%s\\n' \"$PASSWORD\" | passgate user set-password NAME")
		}
		hash, err = verify.HashPassword(pw)
		return err
	}
	return e.onStore(ctx, f, args, 1, check, func(st *store.Store, _ *adminOps, pos []string) int {
		err := st.SetPasswordHash(ctx, pos[0], hash)
		if err == nil {
			fmt.Fprintf(e.Stdout, "Set the portal password of %s.\n", clean(pos[0]))
		}
		return e.done(ctx, st, f.path, "user.set-password", pos[0], "", err)
	})
}
