// Package cli is passgate's command line: it parses the arguments of the
// one binary and runs a subcommand. "serve" wires the whole login path from
// the configuration (listeners in proxy/, the decision in policy/, the
// store and upstreams in backends/); the admin commands change and read the
// store that the decision consults on every login.
//
// Run returns an exit code and never calls os.Exit, so every command is
// tested without a process: 0 success, 1 runtime failure, 2 usage error.
// Each subcommand lives in a file of its own with its own flag.FlagSet;
// flags may come before or after positional arguments, and a repeated flag
// is an error. There are no package-level flags and no init.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
)

// env is what a command may use of the outside world; tests replace it.
type env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Now            func() time.Time
	// Stdin is where a confirmation or a password is read; nil reads
	// nothing for a confirmation, the process's standard input for a
	// password.
	Stdin io.Reader
	// Interactive reports whether Stdin is a terminal a person answers
	// on; nil means no.
	Interactive func() bool
}

// Exit codes of design.md.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// Run runs the passgate command line with args (without the program name)
// and returns the process exit code. ctx ends the command early (SIGINT or
// SIGTERM in main).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{
		Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, Now: time.Now,
		Stdin:       os.Stdin,
		Interactive: func() bool { return isatty.IsTerminal(os.Stdin.Fd()) },
	}
	return e.run(ctx, args)
}

// command is one subcommand or group of subcommands.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

func commands() []command {
	return []command{
		{"serve", "run the IMAP, SMTP and LDAP proxy", cmdServe},
		{"demo", "run everything in one process on loopback, with a demo user", cmdDemo},
		{"migrate", "create or update the store's schema", cmdMigrate},
		{"check-config", "validate a configuration file and list every problem", cmdCheckConfig},
		{"user", "add, list, change and delete users and their MFA state", cmdUser},
		{"app-password", "create, list and delete a user's app passwords", cmdAppPassword},
		{"settings", "show and change global settings", cmdSettings},
		{"admin-token", "create, list and revoke the tokens of the JSON API", cmdAdminToken},
		{"audit", "show the audit trail", cmdAudit},
		{"version", "print the version, commit, build date and Go version", cmdVersion},
	}
}

func (e *env) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		e.topUsage(e.Stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "--version", "-version":
		return cmdVersion(ctx, e, args[1:])
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && name == "help" {
			// "passgate help user add" is "passgate user add --help".
			return e.run(ctx, append(append([]string(nil), args[1:]...), "--help"))
		}
		e.topUsage(e.Stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, e, args[1:])
		}
	}
	return e.usageError("", fmt.Sprintf("unknown command %q", name))
}

func (e *env) topUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("Usage: passgate COMMAND [ARGS] [FLAGS]\n\n")
	b.WriteString("passgate puts app passwords and MFA in front of IMAP, SMTP submission and LDAP.\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-14s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'passgate COMMAND --help' for a command's arguments and flags.\n")
	b.WriteString("The configuration is --config FILE, else $PASSGATE_CONFIG, else ./passgate.yaml, else built-in defaults.\n")
	io.WriteString(w, b.String())
}

// usageError reports a usage problem of the command path ("" for the top
// level) and returns exit code 2.
func (e *env) usageError(path, msg string) int {
	if path == "" {
		fmt.Fprintf(e.Stderr, "passgate: %s\nRun 'passgate --help' for usage.\n", msg)
	} else {
		fmt.Fprintf(e.Stderr, "passgate: %s: %s\nRun 'passgate %s --help' for usage.\n", path, msg, path)
	}
	return exitUsage
}

// fail reports a runtime failure of the command path and returns exit code 1.
func (e *env) fail(path string, err error) int {
	fmt.Fprintf(e.Stderr, "passgate: %s: %v\n", path, err)
	return exitFailure
}

// group dispatches a command that has subcommands, such as "user".
func (e *env) group(ctx context.Context, path, summary string, subs []command, args []string) int {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: passgate %s SUBCOMMAND [ARGS] [FLAGS]\n\n%s\n\nSubcommands:\n", path, summary)
		for _, c := range subs {
			fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
		}
		fmt.Fprintf(w, "\nRun 'passgate %s SUBCOMMAND --help' for its arguments and flags.\n", path)
	}
	if len(args) == 0 {
		usage(e.Stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(e.Stdout)
		return exitOK
	}
	for _, c := range subs {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	if strings.HasPrefix(args[0], "-") {
		return e.usageError(path, fmt.Sprintf("a subcommand comes first, not the flag %s", args[0]))
	}
	return e.usageError(path, fmt.Sprintf("unknown subcommand %q", args[0]))
}

// actor names the administrator in audit events: "cli:" and the login name
// of whoever ran the command.
func (e *env) actor() string { return e.cliActor().String() }
