package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/passgate/passgate/integration/testenv"
)

// promClient asks one Prometheus' HTTP API.
type promClient struct {
	base string
	http *http.Client
}

// query runs an instant query and returns the number of series or
// samples in its result.
func (c promClient) query(q string) (int, string, error) {
	resp, err := c.http.Get(c.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, string(body), fmt.Errorf("query %q: %w: %s", q, err, body)
	}
	if r.Status != "success" {
		return 0, string(body), fmt.Errorf("query %q: %s", q, r.Error)
	}
	if r.Data.ResultType == "scalar" {
		return 1, string(body), nil
	}
	return len(r.Data.Result), string(body), nil
}

// dashboardQueries returns every expr of the Grafana dashboard, with
// Grafana's variables replaced by what Grafana would send.
func dashboardQueries(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	r := strings.NewReplacer("$__rate_interval", "1m", "$__range", "5m", "$instance", ".*")
	var out []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", path, p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, r.Replace(tg.Expr))
		}
	}
	return out
}

// alertQueries returns the query part of every alert rule: each expr is
// written "QUERY > THRESHOLD", and QUERY must return data whether or not
// the alert fires.
func alertQueries(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			i := strings.LastIndex(r.Expr, " > ")
			if i < 0 {
				t.Errorf("alert %s: expr %q is not written QUERY > THRESHOLD", r.Alert, r.Expr)
				continue
			}
			out[r.Alert] = r.Expr[:i]
		}
	}
	return out
}

// TestPrometheusDashboardAndAlerts starts Debian's Prometheus on loopback
// scraping a passgate that serves real logins against Dovecot, checks the
// alert rules with promtool, and runs every dashboard query and every
// alert's query through Prometheus' HTTP API: each must return data, so
// a query that names a metric passgate does not export fails.
func TestPrometheusDashboardAndAlerts(t *testing.T) {
	for _, bin := range []string{"prometheus", "promtool"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (Debian package prometheus; the test command installs it): %v", bin, err)
		}
	}
	rules, err := filepath.Abs("../configs/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	dashboard := "../configs/grafana-dashboard.json"
	if out, err := exec.Command("promtool", "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}

	p := startPassgate(t, passgateConfig{metrics: true})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "prometheus")

	dir := t.TempDir()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	text := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: passgate
    static_configs:
      - targets: [%q]
`, rules, p.metrics)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var log lockedBuffer
	cmd := exec.Command("prometheus", "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	c := promClient{base: "http://" + addr, http: &http.Client{Timeout: patience}}

	// One deadline for all the waits below (Prometheus's start, its
	// scrapes every second, its rules' first evaluation): generous, as a
	// busy machine makes each of them later.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// waitFor polls q until it returns at least one series.
	waitFor := func(what, q string) {
		t.Helper()
		for {
			if n, _, err := c.query(q); err == nil && n > 0 {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("Prometheus never saw %s (%s)\nprometheus log:\n%s", what, q, log.String())
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	waitFor("a scrape of passgate", `up{job="passgate"} == 1`)
	// Logins after the first scrape, so that rates are not all zero:
	// one success, one refusal.
	if got := p.rawLoginFrom(t, "", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("login with the app password: %q", got)
	}
	if got := p.rawLoginFrom(t, "", "alice", "wrong"); !strings.HasPrefix(got, "a NO") {
		t.Fatalf("login with a wrong password: %q", got)
	}
	waitFor("both logins", `sum(passgate_logins_total{proto="imap", outcome=~"success|failure"}) >= 2`)
	waitFor("two scrapes after the logins", `count_over_time(sum(passgate_logins_total{outcome=~"success|failure"})[1m:1s]) >= 2 and sum(increase(passgate_logins_total{outcome="success"}[1m])) > 0`)

	queries := dashboardQueries(t, dashboard)
	if len(queries) < 8 {
		t.Fatalf("%s: %d queries, want a panel for each of logins, failure ratio, lockouts, temporary failures, open sessions, audit queue, lost writes, store latency", dashboard, len(queries))
	}
	for _, q := range queries {
		n, body, err := c.query(q)
		if err != nil || n == 0 {
			t.Errorf("dashboard query returns no data: %s\n%v %s", q, err, body)
		}
	}
	alerts := alertQueries(t, rules)
	for _, want := range []string{"PassgateAuditWritesLost", "PassgateStoreNotAnswering", "PassgateFailureBurst", "PassgateUpstreamRefusing"} {
		if _, ok := alerts[want]; !ok {
			t.Errorf("%s: no alert %s", rules, want)
		}
	}
	for name, q := range alerts {
		n, body, err := c.query(q)
		if err != nil || n == 0 {
			t.Errorf("alert %s: its query returns no data: %s\n%v %s", name, q, err, body)
		}
	}
	// Prometheus evaluated every rule, without error.
	type ruleState struct {
		Name      string `json:"name"`
		Health    string `json:"health"`
		LastError string `json:"lastError"`
	}
	rulesNow := func() []ruleState {
		resp, err := c.http.Get(c.base + "/api/v1/rules")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rr struct {
			Data struct {
				Groups []struct {
					Rules []ruleState `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&rr); err != nil {
			t.Fatal(err)
		}
		var out []ruleState
		for _, g := range rr.Data.Groups {
			out = append(out, g.Rules...)
		}
		return out
	}
	var states []ruleState
	for evaluated := false; !evaluated; {
		states = rulesNow()
		evaluated = len(states) > 0
		for _, r := range states {
			if r.Health == "unknown" || r.Health == "" {
				evaluated = false
			}
		}
		if !evaluated {
			select {
			case <-ctx.Done():
				t.Fatalf("Prometheus never evaluated the rules: %+v", states)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	seen := 0
	for _, r := range states {
		seen++
		if r.Health != "ok" {
			t.Errorf("rule %s: health %s %s", r.Name, r.Health, r.LastError)
		}
	}
	if seen != len(alerts) {
		t.Errorf("Prometheus loaded %d rules, want %d", seen, len(alerts))
	}
}
