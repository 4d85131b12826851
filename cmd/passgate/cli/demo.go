package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/backends/verify"
	"github.com/passgate/passgate/cmd/passgate/demo"
	"github.com/passgate/passgate/configs"
)

// Demo user and its primary password: the demo shows that this password is
// refused once MFA is enforced.
const (
	demoUser    = "demo"
	demoPrimary = "demo-primary-password"
)

// demoMessages returns the messages of the demo user's INBOX.
func demoMessages() []string {
	return []string{
		"From: Ada <ada@example.test>\nTo: demo@example.test\nSubject: Welcome to passgate\nDate: Fri, 27 Nov 2026 09:00:00 +0000\nMessage-ID: <1@demo.invalid>\n\nThis message sits on the in-process IMAP server behind passgate.\nYou read it with an app password.\n",
		"From: Grace <grace@example.test>\nTo: demo@example.test\nSubject: Your app passwords\nDate: Fri, 27 Nov 2026 09:05:00 +0000\nMessage-ID: <2@demo.invalid>\n\nIn production an operator deletes one with: passgate app-password delete NAME --label LABEL\n",
		"From: Linus <linus@example.test>\nTo: demo@example.test\nSubject: Primary passwords\nDate: Fri, 27 Nov 2026 09:10:00 +0000\nMessage-ID: <3@demo.invalid>\n\nThe primary password of an MFA user never reaches this server.\n",
	}
}

// cmdDemo runs "passgate demo": passgate on a fresh SQLite store in a
// temporary directory, in front of in-process IMAP and SMTP servers, with a
// user whose MFA is enforced and one app password. It prints what to try
// and runs until ctx ends (Ctrl-C), then exits 0.
func cmdDemo(ctx context.Context, e *env, args []string) int {
	f := newFlags("demo", "[--imap ADDR] [--smtp ADDR] [--web ADDR]",
		"Run passgate on a throwaway embedded store in front of in-process IMAP and SMTP servers, with a\n"+
			"demo user whose MFA is enforced, and print what to try. Ctrl-C stops it.")
	imapAddr := f.String("imap", "127.0.0.1:1143", "`ADDR` of the demo's IMAP listener")
	smtpAddr := f.String("smtp", "127.0.0.1:1587", "`ADDR` of the demo's SMTP listener")
	webAddr := f.String("web", "127.0.0.1:8080", "`ADDR` of the demo's Security info portal (plain HTTP on loopback)")
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	if err := runDemo(ctx, e, *imapAddr, *smtpAddr, *webAddr); err != nil {
		return e.fail(f.path, err)
	}
	return 0
}

func runDemo(ctx context.Context, e *env, imapAddr, smtpAddr, webAddr string) error {
	dir, err := os.MkdirTemp("", "passgate-demo-")
	if err != nil {
		return fmt.Errorf("make a temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)

	masterPW := make([]byte, 16)
	if _, err := rand.Read(masterPW); err != nil {
		return err
	}
	master := hex.EncodeToString(masterPW)
	users := map[string]string{demoUser: demoPrimary}
	up, err := demo.StartIMAP(demo.IMAPOptions{
		Users: users, MasterUser: "passgate", MasterPassword: master,
		Messages: map[string][]string{demoUser: demoMessages()},
	})
	if err != nil {
		return err
	}
	defer up.Close()
	smtpUp, err := demo.StartSMTP(demo.SMTPOptions{Users: users, MasterUser: "passgate", MasterPassword: master, Out: e.Stdout})
	if err != nil {
		return err
	}
	defer smtpUp.Close()
	secretFile := filepath.Join(dir, "master.secret")
	if err := os.WriteFile(secretFile, []byte(master+"\n"), 0o600); err != nil {
		return err
	}

	cfg := configs.Defaults()
	cfg.Store.DSN = filepath.Join(dir, "passgate.db")
	cfg.KeyFile = filepath.Join(dir, "passgate.key")
	cfg.Policy.TrustedNetworks = []string{"127.0.0.0/8", "::1/128"} // plaintext on loopback only
	cfg.Log.Format = "text"
	cfg.Log.Level = "warn"
	cfg.IMAP.Listen = imapAddr
	cfg.IMAP.Upstream = configs.IMAPUpstream{
		Addresses: []string{up.Addr}, TLS: "none", Login: "master",
		MasterUser: "passgate", MasterPasswordFile: secretFile, MasterStyle: "authzid",
		Separator: "*", ForwardClient: "none", DialTimeout: cfg.IMAP.Upstream.DialTimeout,
	}
	cfg.SMTP.Listen = smtpAddr
	cfg.SMTP.Upstream = configs.SMTPUpstream{
		Addresses: []string{smtpUp.Addr}, TLS: "none", Login: "master",
		MasterUser: "passgate", MasterPasswordFile: secretFile, ForwardClient: "none",
		DialTimeout: cfg.SMTP.Upstream.DialTimeout,
	}
	cfg.Web.Listen = webAddr
	cfg.Web.Verify = "store" // the demo user's password, hashed below
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("demo configuration: %w", err)
	}

	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	if _, err := st.SetMFA(ctx, demoUser, store.MFAEnforced); err != nil {
		st.Close()
		return err
	}
	_, secret, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: demoUser, Label: "demo"})
	if err == nil {
		err = setDemoPassword(ctx, st)
	}
	st.Close()
	if err != nil {
		return err
	}

	log := newLogger(e, cfg, "text")
	ready := func(addrs map[string]string) {
		imap, smtp := addrs["imap"], addrs["smtp"]
		var b strings.Builder
		fmt.Fprintf(&b, "passgate demo is running. Store: %s (removed at exit). Ctrl-C stops it.\n\n", cfg.Store.DSN)
		fmt.Fprintf(&b, "  user             %s (MFA enforced)\n", demoUser)
		fmt.Fprintf(&b, "  primary password %s   <- refused: MFA is enforced\n", demoPrimary)
		fmt.Fprintf(&b, "  app password     %s        <- label \"demo\", scopes imap,smtp,ldap (the demo has no LDAP listener)\n\n", apppass.Format(secret))
		fmt.Fprintf(&b, "List the inbox with the app password (spaces and case do not matter):\n\n")
		fmt.Fprintf(&b, "  curl -s 'imap://%s/INBOX' --user '%s:%s' -X 'FETCH 1:* ENVELOPE'\n\n", imap, demoUser, secret)
		fmt.Fprintf(&b, "The same with the primary password is refused (after 2 s, like every failure):\n\n")
		fmt.Fprintf(&b, "  curl -s 'imap://%s/INBOX' --user '%s:%s' -X 'FETCH 1:* (FLAGS)'; echo \"curl exit code $?\"\n\n", imap, demoUser, demoPrimary)
		if smtp != "" {
			fmt.Fprintf(&b, "Send a message through passgate's SMTP listener (the demo's upstream prints it here):\n\n")
			fmt.Fprintf(&b, "  printf 'Subject: hello\\r\\n\\r\\nsent through passgate\\r\\n' | curl -s 'smtp://%s' --user '%s:%s' --mail-from demo@example.test --mail-rcpt friend@example.test --upload-file -\n\n", smtp, demoUser, secret)
		}
		if web := addrs["web"]; web != "" {
			pub, _ := webPublicURL(cfg, web)
			fmt.Fprintf(&b, "Create your own app password in the Security info portal:\n\n")
			fmt.Fprintf(&b, "  open %s in a browser, sign in as %s with the password %s,\n", pub, demoUser, demoPrimary)
			fmt.Fprintf(&b, "  register an authenticator app (scan the QR code, type a code), then Add sign-in method > App password,\n")
			fmt.Fprintf(&b, "  and use the password it shows in place of PASSWORD:\n\n")
			fmt.Fprintf(&b, "  curl -s 'imap://%s/INBOX' --user '%s:PASSWORD' -X 'FETCH 1:* ENVELOPE'\n\n", imap, demoUser)
		}
		fmt.Fprintf(&b, "Loopback is a trusted network in the demo, so no TLS is needed; in production passwords are refused before TLS.\n")
		fmt.Fprint(e.Stdout, b.String())
	}
	served := make(chan error, 1)
	go func() { served <- serve(ctx, e, cfg, log, &serveOverrides{ready: ready, noIMAPReady: true}) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Ctrl-C: serve drains. Say what it waits for, and let a second
	// Ctrl-C end the sessions at once.
	force := make(chan os.Signal, 1)
	signal.Notify(force, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(force)
	if n := up.Open() + smtpUp.Open(); n > 0 {
		fmt.Fprintf(e.Stderr, "passgate demo: stopping; waiting for %d open session(s) to end, at most %s (a mail client may keep one open). Press Ctrl-C again to stop now.\n", n, drainTimeout)
	}
	select {
	case err := <-served:
		return err
	case <-force:
	}
	fmt.Fprintf(e.Stderr, "passgate demo: stopping now; closing %d open session(s).\n", up.Open()+smtpUp.Open())
	// Closing the in-process upstreams ends every relayed session, so
	// the drain finishes; a client that never logged in is cut off by
	// the grace below.
	up.Close()
	smtpUp.Close()
	grace := time.NewTimer(demoForceGrace)
	defer grace.Stop()
	select {
	case err := <-served:
		return err
	case <-grace.C:
		return nil
	}
}

// demoForceGrace bounds how long a second Ctrl-C waits for the demo's
// listeners once its upstreams are closed.
const demoForceGrace = time.Second

// setDemoPassword stores the demo user's primary password for the
// portal's store verifier.
func setDemoPassword(ctx context.Context, st *store.Store) error {
	h, err := verify.HashPassword(demoPrimary)
	if err != nil {
		return err
	}
	return st.SetPasswordHash(ctx, demoUser, h)
}
