// Command runtests is the one command that runs every passgate test on a
// fresh Debian machine that has only Go:
//
//	go run ./integration/runtests
//
// It installs what is missing with apt-get (as root): PostgreSQL, Dovecot,
// Postfix, slapd, the LDAP tools, swaks, curl, Python, HAProxy, Prometheus,
// Chromium with the DejaVu fonts (for the browser tests) and npm (the README
// lists the packages; a test keeps the two lists equal), and with npm
// axe-core 4 (the accessibility checker the browser tests inject) into a
// cache directory outside the repository (the user's cache directory,
// passgate-tests/npm); it passes the path of axe.min.js to the tests in
// $PASSGATE_AXE_JS. It starts one
// throwaway PostgreSQL cluster in a temporary directory on a free loopback
// port, runs `go test -race ./...` against it (the store's contract suite
// runs on SQLite and on that PostgreSQL; the end-to-end tests in
// integration/ start their own Dovecot, Postfix and slapd the same way),
// optionally fuzzes every fuzz target for a short time, and stops the
// cluster when done, also when tests fail or the run is interrupted.
//
// It sits beside the path of a login: it only prepares and runs the tests.
//
// Arguments after "--" go to `go test` (for example `-- -run TestIMAP ./integration/`).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// need maps a file that must exist to the Debian package that provides it.
var need = []struct{ path, pkg string }{
	{"/usr/lib/postgresql/*/bin/initdb", "postgresql"},
	{"/usr/sbin/dovecot", "dovecot-imapd"},
	{"/usr/lib/dovecot/lmtp", "dovecot-lmtpd"},
	{"/usr/sbin/postfix", "postfix"},
	{"/usr/sbin/slapd", "slapd"},
	{"/usr/bin/ldapsearch", "ldap-utils"},
	{"/usr/bin/swaks", "swaks"},
	// swaks --tls needs IO::Socket::SSL, only a recommendation of swaks.
	{"/usr/share/perl5/IO/Socket/SSL.pm", "libio-socket-ssl-perl"},
	{"/usr/bin/curl", "curl"},
	{"/usr/bin/python3", "python3"},
	{"/usr/sbin/haproxy", "haproxy"},
	// nginx's mail proxy, a column of the SMTP and IMAP benchmarks.
	{"/usr/sbin/nginx", "nginx-core"},
	{"/usr/lib/nginx/modules/ngx_mail_module.so", "libnginx-mod-mail"},
	{"/usr/bin/sqlite3", "sqlite3"}, // the backup tests (docs/deployment.md)
	{"/usr/bin/prometheus", "prometheus"},
	{"/usr/bin/chromium", "chromium"},
	{"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"},
	{"/usr/bin/npm", "npm"},
}

// axeVersion is the npm version range of axe-core that the browser tests
// run; axeEnv carries the path of its axe.min.js to them.
const (
	axeVersion = "axe-core@4"
	axeEnv     = "PASSGATE_AXE_JS"
)

// services lists the init scripts of packages whose installation may start
// the system's own instance; the tests never use those, so a fresh install
// is stopped again. Instances that were there before are left alone.
var services = map[string]string{
	"postgresql":    "postgresql",
	"dovecot-imapd": "dovecot",
	"postfix":       "postfix",
	"slapd":         "slapd",
	"haproxy":       "haproxy",
	"nginx-core":    "nginx",
	"prometheus":    "prometheus",
}

func main() {
	os.Exit(run())
}

func run() int {
	fuzzTime := flag.Duration("fuzztime", 0, "also run every fuzz target for this long (0: none)")
	noInstall := flag.Bool("no-install", false, "do not install missing packages")
	race := flag.Bool("race", true, "build with the race detector (-race=false for benchmarks)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: go run ./integration/runtests [-fuzztime 10s] [-no-install] [-race=false] [-- go test arguments]")
		flag.PrintDefaults()
	}
	flag.Parse()
	goArgs := flag.Args()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if !*noInstall {
		if err := install(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "runtests: %v\n", err)
			return 1
		}
	}
	if os.Getenv(axeEnv) == "" {
		axe, err := installAxe(ctx, !*noInstall)
		if err != nil {
			// The browser tests that need it fail and say why.
			fmt.Fprintf(os.Stderr, "runtests: %v\n", err)
		} else {
			os.Setenv(axeEnv, axe)
		}
	}

	fmt.Println("runtests: starting a throwaway PostgreSQL cluster")
	dsn, stopPG, err := testenv.Postgres(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "runtests: %v\n", err)
		return 1
	}
	defer stopPG()
	os.Setenv("PASSGATE_TEST_POSTGRES", dsn)

	args := []string{"test", "-count=1", "-timeout", "25m"}
	if *race {
		args = append(args, "-race")
	}
	if len(goArgs) > 0 {
		args = append(args, goArgs...)
	} else {
		args = append(args, "./...")
	}
	code := goCmd(ctx, args...)
	if code == 0 && *fuzzTime > 0 {
		code = fuzzAll(ctx, *fuzzTime)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "runtests: interrupted; servers stopped")
		return 130
	}
	return code
}

func goCmd(ctx context.Context, args ...string) int {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	fmt.Println("runtests: go " + strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "runtests: go %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func install(ctx context.Context) error {
	var missing []string
	for _, n := range need {
		if m, _ := filepath.Glob(n.path); len(m) == 0 {
			missing = append(missing, n.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing packages %s: run this command as root so that it can install them with apt-get, or install them yourself", strings.Join(missing, " "))
	}
	fmt.Printf("runtests: installing %s\n", strings.Join(missing, " "))
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{
		{"apt-get", "update", "-q"},
		append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, missing...),
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = prefixed("apt: "), prefixed("apt: ")
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w (is the Debian mirror reachable?)", strings.Join(args[:2], " "), err)
		}
	}
	for _, pkg := range missing {
		if svc, ok := services[pkg]; ok {
			// Stop the system instance that the install may have started;
			// the tests start their own on free ports.
			exec.CommandContext(ctx, "/etc/init.d/"+svc, "stop").Run()
		}
	}
	return nil
}

// installAxe returns the path of axe-core's axe.min.js in the cache
// directory, installing it there with npm first when it is missing and
// install is true.
func installAxe(ctx context.Context, install bool) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("axe-core: no cache directory to install it into (set $%s to axe.min.js): %w", axeEnv, err)
	}
	dir := filepath.Join(cache, "passgate-tests", "npm")
	js := filepath.Join(dir, "node_modules", "axe-core", "axe.min.js")
	if _, err := os.Stat(js); err == nil {
		return js, nil
	}
	if !install {
		return "", fmt.Errorf("axe-core is not in %s and -no-install was given: run once without -no-install, or set $%s to axe.min.js", dir, axeEnv)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("axe-core: %w", err)
	}
	fmt.Printf("runtests: installing %s into %s\n", axeVersion, dir)
	cmd := exec.CommandContext(ctx, "npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "--no-save", axeVersion)
	cmd.Stdout, cmd.Stderr = prefixed("npm: "), prefixed("npm: ")
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("npm install %s: %w (is the npm registry reachable?)", axeVersion, err)
	}
	if _, err := os.Stat(js); err != nil {
		return "", fmt.Errorf("npm installed %s but %w", axeVersion, err)
	}
	return js, nil
}

func prefixed(p string) io.Writer {
	r, w := io.Pipe()
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			fmt.Println(p + s.Text())
		}
	}()
	return w
}

var fuzzFunc = regexp.MustCompile(`(?m)^func (Fuzz\w+)\(`)

// fuzzAll runs every fuzz target of the module for d each.
func fuzzAll(ctx context.Context, d time.Duration) int {
	var targets [][2]string // package dir, function
	filepath.WalkDir(".", func(path string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, m := range fuzzFunc.FindAllSubmatch(b, -1) {
			targets = append(targets, [2]string{"./" + filepath.Dir(path), string(m[1])})
		}
		return nil
	})
	for _, t := range targets {
		args := []string{"test", "-run", "^$", "-fuzz", "^" + t[1] + "$", "-fuzztime", d.String(), t[0]}
		crashers := filepath.Join(t[0], "testdata", "fuzz", t[1])
		before := countFiles(crashers)
		code := goCmd(ctx, args...)
		for try := 2; try <= 3 && code != 0 && ctx.Err() == nil && countFiles(crashers) == before; try++ {
			// No crasher was written: the fuzzing engine itself failed.
			// Go 1.26's coordinator reports "context deadline exceeded"
			// when a busy worker is slow to stop at the -fuzztime
			// deadline (go.dev/issue/75804, fixed in Go 1.27). Try
			// again, up to three times in all; a real crash fails every
			// time and leaves its input in testdata.
			fmt.Printf("runtests: %s stopped without a crasher (go.dev/issue/75804); try %d of 3\n", t[1], try)
			code = goCmd(ctx, args...)
		}
		if code != 0 {
			return code
		}
	}
	return 0
}

// countFiles counts the files in dir (0 when it does not exist).
func countFiles(dir string) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	return len(entries)
}
