// Command soak runs passgate under sustained mixed load, as issue 13 asks:
// two "passgate serve" processes on one PostgreSQL, behind Debian's
// HAProxy (round robin, PROXY v2), in front of the real Dovecot, Postfix
// and slapd, all throwaway instances of the test harness
// (integration/testenv). For -duration it mixes, from loopback source
// addresses (each client binds 127.0.0.x):
//
//   - good app-password logins of alice and carol (MFA enforced): IMAP
//     sessions that SELECT, FETCH and IDLE through the relay, SMTP
//     submissions to dave, LDAP binds followed by a search;
//   - primary-password passthrough of users without MFA (bob, dave over
//     IMAP and SMTP, bob over LDAP), verified by the upstreams;
//   - wrong secrets from 50 other addresses (127.0.0.100–149), one
//     sequential guesser each, always a new secret, 15 at one user then
//     the next, against alice, carol and eight enforced users who exist
//     only in passgate's store, over the three protocols in turn.
//
// Good logins come from 20 addresses (127.0.0.10–29) that alice and carol
// log in from once before the load, so the smart lockout (an address the
// user logged in from is spared the per-user count) keeps them open while
// the guessers get their sources locked. A wrong secret must get exactly
// the uniform failure (a lockout refusal is one, and is expected); a good
// login must succeed; anything else is an unexpected failure.
//
// It prints logins per second, the login latency (command to reply) p50
// and p99 per protocol and kind, the unexpected failures, each instance's
// RSS (/proc/PID/status) and goroutines (go_goroutines of /metrics) idle
// before the load, after the warm-up, at the end of the load and idle
// after it, and compares the audit trail (passgate audit --kind login
// --jsonl --since) with the attempts it made: one login event each.
// It exits 1 when a failure was unexpected, when the audit trail does
// not hold exactly one event per attempt, or when memory or goroutines
// grew beyond the bounds below.
//
//	go build -o passgate ./cmd/passgate
//	go run ./integration/soak -passgate ./passgate -duration 10m
//
// Without -passgate it builds the binary itself (run it from the module
// root). With $PASSGATE_TEST_POSTGRES set it uses that cluster, as the
// tests do; otherwise it starts its own (fsync off).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Noise bounds: what the instances may grow by between the two samples
// taken under load (after the warm-up, at the end), and in goroutines
// between the idle samples before and after the load.
const (
	rssGrowthFactor = 1.25     // RSS at the end ≤ after warm-up × this + rssGrowthSlack
	rssGrowthSlack  = 16 << 20 // bytes
	goroutineSlack  = 20       // idle after ≤ idle before + this
)

func main() {
	os.Exit(run())
}

func run() int {
	duration := flag.Duration("duration", 60*time.Second, "how long the load runs")
	workers := flag.Int("workers", 4, "concurrent clients of good logins (the 50 guessers come on top)")
	bin := flag.String("passgate", "", "passgate binary (empty: go build ./cmd/passgate from the current directory)")
	warmup := flag.Duration("warmup", 10*time.Second, "load before the first memory and goroutine sample under load")
	idle := flag.Duration("idle", 500*time.Millisecond, "how long each IMAP session stays in IDLE")
	flag.Parse()
	if *warmup >= *duration {
		fmt.Fprintln(os.Stderr, "soak: -warmup must be shorter than -duration")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "passgate-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The servers' unprivileged users must traverse it.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	if *bin == "" {
		*bin = filepath.Join(dir, "passgate")
		build := exec.CommandContext(ctx, "go", "build", "-o", *bin, "./cmd/passgate")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "soak: go build ./cmd/passgate (run from the module root, or pass -passgate): %v\n", err)
			return 1
		}
	} else if *bin, err = filepath.Abs(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}

	env, err := startEnv(ctx, dir, *bin)
	if env != nil {
		defer env.stop()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: start:", err)
		return 1
	}
	rep, err := soak(ctx, env, *duration, *warmup, *workers, *idle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	rep.print(os.Stdout)
	if problems := rep.problems(); len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "soak: FAIL:", p)
		}
		return 1
	}
	fmt.Println("soak: PASS")
	return 0
}

// soak primes the good addresses, runs the load for duration and
// gathers the report.
func soak(ctx context.Context, env *environment, duration, warmup time.Duration, workers int, idle time.Duration) (*report, error) {
	start := time.Now().Add(-time.Second).UTC().Truncate(time.Second)
	rep := &report{workers: workers, duration: duration, stats: newStats()}
	for _, p := range env.instances {
		s, err := p.sample()
		if err != nil {
			return nil, err
		}
		rep.samples = append(rep.samples, []sample{s})
	}
	ld := &load{env: env, stats: rep.stats, idle: idle}
	if err := ld.prime(); err != nil {
		return nil, fmt.Errorf("prime the good addresses: %w", err)
	}
	// The familiar addresses ride on the audit write (within about 10 ms).
	time.Sleep(time.Second)

	loadCtx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	done := ld.run(loadCtx, workers)
	began := time.Now()
	select {
	case <-time.After(warmup):
	case <-loadCtx.Done():
	}
	for i, p := range env.instances {
		s, err := p.sample()
		if err != nil {
			return nil, err
		}
		rep.samples[i] = append(rep.samples[i], s)
	}
	<-loadCtx.Done()
	if ctx.Err() != nil {
		<-done
		return nil, errors.New("interrupted")
	}
	for i, p := range env.instances {
		s, err := p.sample()
		if err != nil {
			return nil, err
		}
		rep.samples[i] = append(rep.samples[i], s)
	}
	<-done // the attempts under way finish: none is cut
	rep.elapsed = time.Since(began)
	var err error
	// Sessions closed, relays ended: let the instances settle.
	time.Sleep(3 * time.Second)
	for i, p := range env.instances {
		s, err := p.sample()
		if err != nil {
			return nil, err
		}
		rep.samples[i] = append(rep.samples[i], s)
	}
	if rep.audit, rep.lockouts, err = env.instances[0].auditCounts(ctx, start, rep.stats.attempts()); err != nil {
		return nil, err
	}
	for _, p := range env.instances {
		rep.logErrors = append(rep.logErrors, p.logErrors())
	}
	return rep, nil
}
