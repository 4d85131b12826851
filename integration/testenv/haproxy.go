package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// haproxyStartTimeout bounds how long StartHAProxy waits for its ports.
const haproxyStartTimeout = time.Minute

// HAProxyRoute is one TCP frontend of a test HAProxy: it listens on a
// free loopback port and forwards to Backend, announcing the client with
// the PROXY protocol version Send names.
type HAProxyRoute struct {
	Name    string // frontend name, e.g. "imaps"
	Backend string // host:port
	Send    string // "send-proxy" (v1) or "send-proxy-v2"
	// More are further servers beside Backend, balanced round robin and
	// health-checked (a TCP connect every 200 ms), as in front of
	// several passgate instances.
	More []string
}

// HAProxy is a throwaway HAProxy (Debian's haproxy) in TCP mode, started
// in the foreground with its own configuration.
type HAProxy struct {
	Addrs map[string]string // route name → the frontend's host:port

	cmd     *exec.Cmd
	out     *lockedBuf
	waitErr chan error
	once    sync.Once
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartHAProxy writes a configuration for routes into dir and starts
// HAProxy with it. A missing haproxy binary is an error that names the
// package: tests fail, never skip, without it.
func StartHAProxy(ctx context.Context, dir string, routes []HAProxyRoute) (*HAProxy, error) {
	bin, err := haproxyBinary()
	if err != nil {
		return nil, err
	}
	h := &HAProxy{Addrs: map[string]string{}, out: &lockedBuf{}, waitErr: make(chan error, 1)}
	var cfg bytes.Buffer
	cfg.WriteString("global\n    maxconn 512\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n")
	for _, r := range routes {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		h.Addrs[r.Name] = addr
		fmt.Fprintf(&cfg, "\nfrontend f_%s\n    bind %s\n    default_backend b_%s\n\nbackend b_%s\n",
			r.Name, addr, r.Name, r.Name)
		if len(r.More) == 0 {
			fmt.Fprintf(&cfg, "    server s1 %s %s\n", r.Backend, r.Send)
			continue
		}
		cfg.WriteString("    balance roundrobin\n    option redispatch\n    retries 2\n")
		for i, b := range append([]string{r.Backend}, r.More...) {
			fmt.Fprintf(&cfg, "    server s%d %s %s check inter 200ms fall 1 rise 1\n", i+1, b, r.Send)
		}
	}
	var addrs []string
	for _, a := range h.Addrs {
		addrs = append(addrs, a)
	}
	if err := h.start(ctx, bin, dir, cfg.String(), addrs); err != nil {
		return nil, err
	}
	return h, nil
}

// StartHAProxyConfig starts HAProxy with the configuration text cfg (for
// one taken from configs/, with its addresses rewritten to the test's),
// written into dir, and waits until it accepts connections on each of
// listen. Addrs is left empty: the caller knows its frontends.
func StartHAProxyConfig(ctx context.Context, dir, cfg string, listen []string) (*HAProxy, error) {
	bin, err := haproxyBinary()
	if err != nil {
		return nil, err
	}
	h := &HAProxy{Addrs: map[string]string{}, out: &lockedBuf{}, waitErr: make(chan error, 1)}
	if err := h.start(ctx, bin, dir, cfg, listen); err != nil {
		return nil, err
	}
	return h, nil
}

// haproxyBinary finds Debian's haproxy.
func haproxyBinary() (string, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr != nil {
			return "", fmt.Errorf("testenv: haproxy not found (apt-get install haproxy; the test command installs it): %w", err)
		}
		bin = "/usr/sbin/haproxy"
	}
	return bin, nil
}

// start writes cfg into dir, starts HAProxy in the foreground with it and
// waits until every address of listen accepts a connection.
func (h *HAProxy) start(ctx context.Context, bin, dir, cfg string, listen []string) error {
	conf := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("testenv: haproxy: write configuration: %w", err)
	}
	// Not CommandContext: the server outlives the start-up context.
	h.cmd = exec.Command(bin, "-f", conf, "-db")
	h.cmd.Dir = dir
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		return fmt.Errorf("testenv: haproxy: start: %w", err)
	}
	go func() { h.waitErr <- h.cmd.Wait() }()
	deadline := time.Now().Add(haproxyStartTimeout)
	for _, a := range listen {
		for {
			c, err := net.DialTimeout("tcp", a, 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case werr := <-h.waitErr:
				h.waitErr <- werr
				return fmt.Errorf("testenv: haproxy exited at start (%v):\n%s", werr, h.out.String())
			case <-ctx.Done():
				h.Stop()
				return fmt.Errorf("testenv: haproxy: %w", ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				h.Stop()
				return fmt.Errorf("testenv: haproxy does not listen on %s after %s:\n%s", a, haproxyStartTimeout, h.out.String())
			}
		}
	}
	return nil
}

// Output returns what HAProxy printed.
func (h *HAProxy) Output() string { return h.out.String() }

// Stop stops HAProxy (SIGTERM, then SIGKILL after 5 s).
func (h *HAProxy) Stop() {
	h.once.Do(func() {
		if h.cmd == nil || h.cmd.Process == nil {
			return
		}
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.waitErr:
		case <-time.After(5 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.waitErr
		}
	})
}
