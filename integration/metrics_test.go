package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// curlGet fetches url with curl and returns the HTTP status and body.
func curlGet(t *testing.T, url string) (int, string) {
	t.Helper()
	out, err := exec.Command("curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", url).Output()
	if err != nil {
		t.Fatalf("curl %s: %v", url, err)
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	code, err := strconv.Atoi(s[i+1:])
	if err != nil {
		t.Fatalf("curl %s: no status in %q", url, s)
	}
	return code, strings.TrimSuffix(s[:i], "\n")
}

// metricValue returns the value of the sample that matches name and
// every label given (in any order), or -1 when there is none.
func metricValue(body, name string, labels ...string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		ok := true
		for _, l := range labels {
			if !strings.Contains(m[1], l) {
				ok = false
			}
		}
		if ok {
			v, err := strconv.ParseFloat(m[2], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// TestMetricsEndpoints runs serve with metrics.listen over a PostgreSQL
// store and reads its endpoints with curl: /healthz and /readyz answer
// 200; an IMAP login with an app password and a refused one show in
// passgate_logins_total, an open connection in passgate_connections_open;
// when the store's database is dropped, /readyz answers 503 while
// /healthz still answers 200.
func TestMetricsEndpoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, stopPG, err := testenv.Postgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopPG)
	name := fmt.Sprintf("passgate_metrics_%d", os.Getpid())
	dsn, err := testenv.CreateDatabase(ctx, base, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.DropDatabase(context.Background(), base, name) })

	p := startPassgate(t, passgateConfig{metrics: true, postgresDSN: dsn})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")
	url := "http://" + p.metrics

	if code, body := curlGet(t, url+"/healthz"); code != 200 || body != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := curlGet(t, url+"/readyz"); code != 200 || body != "ready" {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	if got := p.rawLoginFrom(t, "", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("login with the app password: %q", got)
	}
	if got := p.rawLoginFrom(t, "", "alice", "wrong"); !strings.HasPrefix(got, "a NO") {
		t.Fatalf("login with a wrong password: %q", got)
	}
	// One connection stays open while the metrics are read.
	held, err := tls.Dial("tcp", p.imapsAddr, env.certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := held.Read(make([]byte, 64)); err != nil {
		t.Fatalf("greeting: %v", err)
	}

	code, body := curlGet(t, url+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	checks := []struct {
		name   string
		labels []string
		ok     func(float64) bool
		want   string
	}{
		{"passgate_logins_total", []string{`proto="imap"`, `credential="app-password"`, `outcome="success"`}, func(v float64) bool { return v == 1 }, "1"},
		{"passgate_logins_total", []string{`proto="imap"`, `credential="none"`, `outcome="failure"`}, func(v float64) bool { return v == 1 }, "1"},
		// Two logins and the held connection, and the start-up probes.
		{"passgate_connections_total", []string{`listener="imaps"`}, func(v float64) bool { return v >= 3 }, ">= 3"},
		{"passgate_connections_open", []string{`listener="imaps"`}, func(v float64) bool { return v == 1 }, "1"},
		{"passgate_connections_open", []string{`listener="imap"`}, func(v float64) bool { return v == 0 }, "0"},
		{"passgate_audit_queue_writes", nil, func(v float64) bool { return v >= 0 }, ">= 0"},
		{"passgate_audit_lost_writes_total", nil, func(v float64) bool { return v == 0 }, "0"},
		{"go_goroutines", nil, func(v float64) bool { return v > 0 }, "> 0"},
	}
	for _, c := range checks {
		if v := metricValue(body, c.name, c.labels...); !c.ok(v) {
			t.Errorf("%s%v = %v, want %s", c.name, c.labels, v, c.want)
		}
	}
	if strings.Contains(body, pw) || strings.Contains(body, strings.ReplaceAll(pw, " ", "")) {
		t.Error("the app password appears in /metrics")
	}

	if err := testenv.DropDatabase(ctx, base, name); err != nil {
		t.Fatal(err)
	}
	if code, body := curlGet(t, url+"/readyz"); code != 503 || body != "not ready: the store does not answer" {
		t.Fatalf("/readyz with the database gone: %d %q, want 503", code, body)
	}
	if code, _ := curlGet(t, url+"/healthz"); code != 200 {
		t.Fatalf("/healthz with the database gone: %d, want 200", code)
	}
}
