// Command passgate is the one binary of passgate: "passgate serve" runs the
// IMAP, SMTP and LDAP listeners that every login passes through, and the
// admin commands (user, app-password, settings, audit, migrate,
// check-config) change and read the store that the decision consults.
//
// main only ties the process to package cli: it turns SIGINT and SIGTERM
// into a cancelled context and exits with the code that cli.Run returns.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/passgate/passgate/cmd/passgate/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
