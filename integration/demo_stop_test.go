package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// TestDemoSecondCtrlC: when Ctrl-C finds a session open, the demo says
// what it waits for, and a second Ctrl-C stops it at once instead of
// after the 30 s drain (issue 14).
func TestDemoSecondCtrlC(t *testing.T) {
	bin := passgateBinary(t)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	smtpPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "demo", "--imap", addr, "--smtp", fmt.Sprintf("127.0.0.1:%d", smtpPort))
	cmd.Dir = t.TempDir()
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor := func(buf *lockedBuffer, what string) {
		t.Helper()
		deadline := time.Now().Add(patience)
		for !strings.Contains(buf.String(), what) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q within %v\nstdout:\n%s\nstderr:\n%s", what, patience, stdout.String(), stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(&stdout, "Loopback is a trusted network")
	secret := regexp.MustCompile(`app password\s+([a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4})`).FindStringSubmatch(stdout.String())
	if secret == nil {
		t.Fatalf("no app password in the demo's output:\n%s", stdout.String())
	}

	// A mail client that stays logged in.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "a LOGIN demo \"%s\"\r\n", secret[1])
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				t.Fatalf("login: %q", l)
			}
			break
		}
	}

	const drain = 30 * time.Second // the demo's drain, which the open session would last
	first := time.Now()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitFor(&stderr, "waiting for 1 open session(s) to end, at most 30s")
	waitFor(&stderr, "Press Ctrl-C again to stop now.")
	done := make(chan error, 1)
	start := time.Now()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		// Without the second Ctrl-C the demo would stop only when the
		// drain ends, 30 s after the first, the session being open: a
		// stop before then is the second Ctrl-C's (issue 14 asks for
		// 2 s, logged here; a busy machine may take longer, never the
		// whole drain).
		t.Logf("stopped %v after the second Ctrl-C, %v after the first", time.Since(start), time.Since(first))
		if err != nil {
			t.Errorf("exit after the second Ctrl-C: %v\nstderr:\n%s", err, stderr.String())
		}
		if el := time.Since(first); el >= drain {
			t.Errorf("stopped %v after the first Ctrl-C: only once the %v drain was over, not at the second Ctrl-C", el, drain)
		}
	case <-time.After(drain + patience):
		t.Fatal("demo did not stop after a second Ctrl-C, nor after the drain")
	}
	if !strings.Contains(stderr.String(), "stopping now; closing 1 open session(s)") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	// The client sees its session end.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := r.ReadString('\n'); err != nil {
			break
		}
	}
}
