package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// passgateBinary builds cmd/passgate once per test binary.
func passgateBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "passgate-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "passgate")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/passgate/passgate/cmd/passgate").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// TestDemo runs the README's first command as a new user would: the built
// binary's "demo", then the curl commands it prints, then Ctrl-C.
func TestDemo(t *testing.T) {
	bin := passgateBinary(t)
	imapPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	smtpPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	webPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "demo", "--imap", fmt.Sprintf("127.0.0.1:%d", imapPort), "--smtp", fmt.Sprintf("127.0.0.1:%d", smtpPort),
		"--web", fmt.Sprintf("127.0.0.1:%d", webPort))
	cmd.Dir = t.TempDir()
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	// Wait for the instructions.
	deadline := time.Now().Add(patience)
	for !strings.Contains(stdout.String(), "Loopback is a trusted network") {
		if time.Now().After(deadline) {
			t.Fatalf("demo printed no instructions in %v\nstdout:\n%s\nstderr:\n%s", patience, stdout.String(), stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := stdout.String()
	var curls []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, "curl ") || strings.HasPrefix(l, "printf ") {
			curls = append(curls, l)
		}
	}
	if len(curls) < 2 {
		t.Fatalf("demo printed %d curl commands, want at least 2:\n%s", len(curls), out)
	}
	secret := regexp.MustCompile(`app password\s+([a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4})`).FindStringSubmatch(out)
	if secret == nil {
		t.Fatalf("no app password in the demo's output:\n%s", out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	sh := func(line string) (string, int) {
		c := exec.CommandContext(ctx, "sh", "-c", line)
		b, err := c.CombinedOutput()
		code := 0
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else {
				t.Fatalf("%s: %v", line, err)
			}
		}
		return string(b), code
	}
	// 1: the app password lists the inbox.
	got, code := sh(curls[0])
	if code != 0 || !strings.Contains(got, "Welcome to passgate") || strings.Count(got, "FETCH") != 3 {
		t.Errorf("app-password curl: exit %d, output:\n%s", code, got)
	}
	// 2: the primary password is refused, after the failure delay.
	start := time.Now()
	got, _ = sh(curls[1])
	if !strings.Contains(got, "curl exit code 67") {
		t.Errorf("primary-password curl was not refused with exit 67 (login denied):\n%s", got)
	}
	if el := time.Since(start); el < 1900*time.Millisecond {
		t.Errorf("refusal came after %v, want the 2s failure delay", el)
	}
	// 3: SMTP, when offered, reaches the demo's upstream.
	if len(curls) >= 3 {
		got, code = sh(curls[2])
		if code != 0 {
			t.Errorf("smtp curl: exit %d:\n%s", code, got)
		}
		deadline := time.Now().Add(patience)
		for !strings.Contains(stdout.String(), "sent through passgate") && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(stdout.String(), "demo SMTP upstream received a message: user demo") {
			t.Errorf("demo upstream did not print the message:\n%s", stdout.String())
		}
	}
	// 4: the portal: sign in, register an authenticator app, create an
	// app password and use it with the printed curl command.
	if !strings.Contains(out, fmt.Sprintf("open http://localhost:%d in a browser", webPort)) {
		t.Errorf("the demo does not print the portal's address:\n%s", out)
	} else {
		pw := demoPortalAppPassword(t, fmt.Sprintf("http://localhost:%d", webPort))
		var withPW string
		for _, c := range curls {
			if strings.Contains(c, "demo:PASSWORD") {
				withPW = strings.Replace(c, "PASSWORD", pw, 1)
			}
		}
		if got, code := sh(withPW); code != 0 || !strings.Contains(got, "Welcome to passgate") {
			t.Errorf("curl with the portal's app password (%q): exit %d:\n%s", withPW, code, got)
		}
	}
	// Ctrl-C: exit 0.
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo exit after Ctrl-C: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(patience):
		t.Fatal("demo did not stop after Ctrl-C")
	}
	if strings.Contains(stderr.String(), strings.ReplaceAll(secret[1], " ", "")) {
		t.Error("the app password appears in the demo's log")
	}
}

// TestServeBinary runs "passgate serve" as an operator would: the built
// binary with a configuration file, a login through it, then SIGTERM,
// which must drain and exit 0. Usage errors exit 2, a broken
// configuration 1, --help 0.
func TestServeBinary(t *testing.T) {
	bin := passgateBinary(t)
	run := func(args ...string) (string, int) {
		c := exec.Command(bin, args...)
		c.Dir = t.TempDir()
		out, err := c.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	broken := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(broken, []byte("imap:\n  listen: 127.0.0.1:1\n  upstream:\n    tls: sometimes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"serve", "--help"}, 0, "Usage: passgate serve"},
		{"extra-argument", []string{"serve", "now"}, 2, ""},
		{"unknown-flag", []string{"serve", "--port", "1"}, 2, "flag provided but not defined"},
		{"broken-config", []string{"serve", "--config", broken}, 1, "imap.upstream.tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := run(tc.args...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("passgate %s: exit %d, want %d; output:\n%s", strings.Join(tc.args, " "), code, tc.code, out)
			}
		})
	}

	t.Run("serve-login-sigterm", func(t *testing.T) {
		p := startPassgate(t, passgateConfig{})
		p.enforce(t, "alice")
		pw := p.appPassword(t, "alice", "binary")
		p.cancel() // hand the ports over to the binary
		<-p.done
		p.done <- 0
		cmd := exec.Command(bin, "serve", "--config", p.config)
		var out lockedBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		for deadline := time.Now().Add(patience); !dialable(p.imapsAddr); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("passgate serve does not listen:\n%s", out.String())
			}
		}
		if got := p.rawLoginFrom(t, "127.0.0.57", "alice", pw); !strings.HasPrefix(got, "a OK") {
			t.Fatalf("login through the binary: %q", got)
		}
		// SIGHUP (systemctl reload) reloads the certificate and serve goes on.
		cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(patience); !strings.Contains(out.String(), "certificate reloaded"); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no reload after SIGHUP:\n%s", out.String())
			}
		}
		if got := p.rawLoginFrom(t, "127.0.0.57", "alice", pw); !strings.HasPrefix(got, "a OK") {
			t.Fatalf("login after SIGHUP: %q", got)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("serve after SIGTERM: %v\n%s", err, out.String())
			}
		case <-time.After(patience):
			t.Fatal("serve did not exit after SIGTERM")
		}
		if !strings.Contains(out.String(), `"msg":"listening"`) || !strings.Contains(out.String(), `"msg":"shutting down"`) {
			t.Errorf("serve's JSON log lacks listening/shutting down:\n%s", out.String())
		}
	})
}
