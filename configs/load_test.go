package configs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/configs"
)

// write puts text into a temporary file and returns its path.
func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "passgate.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// problems splits a joined error into its lines, without the file prefix.
func problems(err error) []string {
	if err == nil {
		return nil
	}
	var multi interface{ Unwrap() []error }
	if errors.As(err, &multi) {
		var out []string
		for _, e := range multi.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}

func TestExamples(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("found %d example files, want passgate.example.yaml and minimal.yaml at least", len(files))
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			cfg, err := configs.LoadWith(f, func(string) (string, bool) { return "", false })
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
	full, err := configs.Load("passgate.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The full example sets every section.
	if full.Store.Driver != "postgres" || full.IMAP.ListenTLS == "" || full.SMTP.Listen == "" ||
		full.LDAP.Upstream.ServiceDN == "" || full.Metrics.Listen == "" ||
		len(full.Policy.TrustedNetworks) == 0 || full.Log.Format == "" {
		t.Errorf("passgate.example.yaml leaves a section out: %+v", full)
	}
	min, err := configs.Load("minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if min.Store.Driver != "sqlite" || min.IMAP.Listen == "" || min.SMTP.Listen != "" || min.LDAP.Listen != "" {
		t.Errorf("minimal.yaml: want sqlite and IMAP only, got %+v", min)
	}
}

func TestDefaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		noFile bool
		text   string
	}{
		{"no-file", true, ""},
		{"empty-file", false, ""},
		{"comment-only", false, "# nothing\n"},
		{"empty-sections", false, "store:\nimap:\n  upstream:\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Without a file the store stays in the working directory;
			// with one, beside the file.
			path, dir := "", ""
			if !tc.noFile {
				path = write(t, tc.text)
				dir = filepath.Dir(path)
			}
			c, err := configs.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			checks := []struct {
				key       string
				got, want any
			}{
				{"store.driver", c.Store.Driver, "sqlite"},
				{"store.dsn", c.Store.DSN, filepath.Join(dir, "passgate.db")},
				{"key_file", c.KeyFile, filepath.Join(dir, "passgate.key")},
				{"tls.min_version", c.TLS.MinVersion, "1.2"},
				{"policy.failure_delay", c.Policy.FailureDelay.D(), 2 * time.Second},
				{"audit.login_retention", c.Audit.LoginRetention.D(), 30 * 24 * time.Hour},
				{"audit.change_retention", c.Audit.ChangeRetention.D(), 400 * 24 * time.Hour},
				{"policy.max_app_passwords", c.Policy.MaxAppPasswords, 40},
				{"policy.default_mfa", c.Policy.DefaultMFA, "disabled"},
				{"policy.limits.pre_login_timeout", c.Policy.Limits.PreLoginTimeout.D(), 60 * time.Second},
				{"policy.limits.max_line_length", c.Policy.Limits.MaxLineLength, 8192},
				{"policy.limits.max_literal", c.Policy.Limits.MaxLiteral, 8192},
				{"policy.limits.max_commands", c.Policy.Limits.MaxCommands, 50},
				{"policy.limits.max_auth_failures", c.Policy.Limits.MaxAuthFailures, 5},
				{"imap.upstream.tls", c.IMAP.Upstream.TLS, "starttls"},
				{"imap.upstream.login", c.IMAP.Upstream.Login, "master"},
				{"imap.upstream.master_style", c.IMAP.Upstream.MasterStyle, "authzid"},
				{"imap.upstream.separator", c.IMAP.Upstream.Separator, "*"},
				{"imap.upstream.forward_client", c.IMAP.Upstream.ForwardClient, "id"},
				{"imap.upstream.dial_timeout", c.IMAP.Upstream.DialTimeout.D(), 5 * time.Second},
				{"smtp.upstream.tls", c.SMTP.Upstream.TLS, "starttls"},
				{"smtp.upstream.login", c.SMTP.Upstream.Login, "xclient"},
				{"smtp.upstream.forward_client", c.SMTP.Upstream.ForwardClient, "xclient"},
				{"smtp.upstream.dial_timeout", c.SMTP.Upstream.DialTimeout.D(), 5 * time.Second},
				{"smtp.max_recipients", c.SMTP.MaxRecipients, 100},
				{"ldap.mode", c.LDAP.Mode, "relay"},
				{"log.level", c.Log.Level, "info"},
				{"imap.listen", c.IMAP.Listen, ""},
			}
			for _, ck := range checks {
				if ck.got != ck.want {
					t.Errorf("%s = %v, want %v", ck.key, ck.got, ck.want)
				}
			}
		})
	}
}

func TestExplicitZeroWinsOverDefault(t *testing.T) {
	c, err := configs.Load(write(t, "policy:\n  failure_delay: 0s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.FailureDelay != 0 {
		t.Errorf("failure_delay = %v, want 0", c.Policy.FailureDelay)
	}
}

func TestEnvExpansion(t *testing.T) {
	env := map[string]string{
		"PG_DSN":  "postgres://passgate@db.internal/passgate",
		"MAXAPP":  "12",
		"DELAY":   "3s",
		"LISTEN":  "127.0.0.1:1143",
		"MASTER":  "passgate",
		"EMPTYOK": "",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	p := write(t, `store:
  driver: postgres
  dsn: ${PG_DSN}
policy:
  trusted_networks: [127.0.0.0/8]
  max_app_passwords: ${MAXAPP}
  failure_delay: ${DELAY}
imap:
  listen: "${LISTEN}"
  upstream:
    addresses: [127.0.0.1:143]
    master_user: ${MASTER}
    master_password_file: "/run/$${literal}/x${EMPTYOK}"
`)
	c, err := configs.LoadWith(p, lookup)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.DSN != env["PG_DSN"] || c.Policy.MaxAppPasswords != 12 || c.Policy.FailureDelay.D() != 3*time.Second ||
		c.IMAP.Listen != env["LISTEN"] || c.IMAP.Upstream.MasterUser != "passgate" ||
		c.IMAP.Upstream.MasterPasswordFile != "/run/${literal}/x" {
		t.Errorf("expansion went wrong: %+v", c)
	}
	t.Setenv("PASSGATE_TEST_LISTEN", "127.0.0.1:2143")
	c, err = configs.Load(write(t, "imap:\n  listen: ${PASSGATE_TEST_LISTEN}\n  upstream:\n    addresses: [127.0.0.1:143]\n    login: passthrough\npolicy:\n  trusted_networks: [127.0.0.1/32]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.IMAP.Listen != "127.0.0.1:2143" {
		t.Errorf("Load does not read the process environment: imap.listen = %q", c.IMAP.Listen)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"fail/unknown-key", "store:\n  drivr: sqlite\n", []string{
			`line 2: store.drivr: unknown key; did you mean driver?`}},
		{"fail/unknown-top-key", "listen: 1\n", []string{
			`line 1: listen: unknown key; known keys here: audit, imap, key_file, ldap, log, metrics, policy, smtp, store, tls, web`}},
		{"fail/duplicate-key", "store:\n  driver: sqlite\n  driver: postgres\n", []string{
			`line 3: store.driver: duplicate key (first at line 2); keep one`}},
		{"fail/duplicate-section", "log:\n  level: info\nlog:\n  level: debug\n", []string{
			`line 3: log: duplicate key (first at line 1); keep one`}},
		{"fail/several-at-once", "policy:\n  max_app_passwords: many\n  failure_delay: soon\n  trusted_networks: 10.0.0.0/8\nimap:\n  upstream:\n    adresses: []\n", []string{
			`line 2: policy.max_app_passwords ("many"): must be a whole number`,
			`line 3: policy.failure_delay ("soon"): must be a duration such as 2s, 10m or 7d`,
			`line 4: policy.trusted_networks: must be a list, e.g. [a, b]`,
			`line 7: imap.upstream.adresses: unknown key; did you mean addresses?`}},
		{"fail/bare-number-duration", "policy:\n  failure_delay: 2\n", []string{
			`line 2: policy.failure_delay ("2"): must be a duration such as 2s, 10m or 7d`}},
		{"fail/bool", "smtp:\n  legacy_auth_line: perhaps\n", []string{
			`line 2: smtp.legacy_auth_line ("perhaps"): must be true or false`}},
		{"fail/mapping-for-string", "key_file:\n  a: b\n", []string{
			`line 2: key_file: must be a single value, not a list or mapping`}},
		{"fail/section-not-mapping", "imap: yes\n", []string{
			`line 1: imap: must be a mapping of keys (key: value)`}},
		{"fail/env-unset", "key_file: ${PASSGATE_TEST_SURELY_UNSET}\n", []string{
			`line 1: key_file: ${PASSGATE_TEST_SURELY_UNSET}: environment variable PASSGATE_TEST_SURELY_UNSET is not set; set it or write the value out`}},
		{"fail/env-unterminated", "key_file: ${X\n", []string{
			`line 1: key_file: unterminated ${: write ${NAME}, or $${ for a literal ${`}},
		{"fail/alias", "store: &s\n  driver: sqlite\nlog: *s\n", []string{
			`line 1: store: YAML anchors and aliases are not supported; write the value out`,
			`line 3: log: YAML anchors and aliases are not supported; write the value out`}},
		{"fail/merge-key", "store:\n  <<: {driver: sqlite}\n", []string{
			`line 2: store.<<: merge keys (<<) are not supported; write the keys out`}},
		{"fail/not-a-mapping", "- a\n- b\n", []string{
			`line 1: the file must be a mapping of keys such as "store:" and "imap:"`}},
		{"fail/two-documents", "store: {}\n---\nlog: {}\n", []string{
			`more than one YAML document (a second "---"): keep one document per file`}},
		{"fail/validation-after-decode", "policy:\n  failure_delay: -1s\n", []string{
			`policy.failure_delay ("-1s"): must be zero or positive`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, tc.yaml)
			_, err := configs.LoadWith(p, func(string) (string, bool) { return "", false })
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if !strings.HasPrefix(err.Error(), "configs: "+p+": ") {
				t.Errorf("error does not start with the file: %q", err)
			}
			got := problems(err)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := configs.Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want a not-exist error naming the file", err)
	}
}

func TestDurationYAML(t *testing.T) {
	d := configs.Duration(90 * time.Second)
	v, err := d.MarshalYAML()
	if err != nil || v != "1m30s" {
		t.Errorf("MarshalYAML = %v, %v", v, err)
	}
	if d.D() != 90*time.Second {
		t.Errorf("D() = %v", d.D())
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want, wantErr string
	}{
		{"ok/plain", "s3cret", "s3cret", ""},
		{"ok/newline", "s3cret\n", "s3cret", ""},
		{"ok/crlf", "s3cret\r\n", "s3cret", ""},
		{"ok/inner-spaces-kept", " s3 cret \n", " s3 cret ", ""},
		{"fail/empty", "", "", "the file is empty"},
		{"fail/only-newline", "\n", "", "the file is empty"},
		{"fail/two-lines", "a\nb\n", "", "more than one line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, "/", "_"))
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := configs.ReadSecretFile(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), p) {
					t.Fatalf("err = %v, want %q naming the file", err, tc.wantErr)
				}
				if strings.TrimSpace(tc.content) != "" && strings.Contains(err.Error(), strings.TrimSpace(tc.content)) {
					t.Errorf("error reveals the secret: %v", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ReadSecretFile = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	_, err := configs.ReadSecretFile(filepath.Join(dir, "missing.secret"))
	if err == nil || !strings.Contains(err.Error(), "missing.secret") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"", "store:\n  driver: sqlite\n", "store:\n  drivr: x\n", "policy:\n  failure_delay: ${X}\n",
		"a: &a [*a]\n", "imap: {upstream: {addresses: [1, 2]}}\n", "- 1\n", "---\n---\n", "key_file: $${x}\n",
	} {
		f.Add([]byte(seed))
	}
	for _, name := range []string{"passgate.example.yaml", "minimal.yaml"} {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "fuzz.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		type loaded struct {
			cfg *configs.Config
			err error
		}
		done := make(chan loaded, 1)
		go func() {
			cfg, err := configs.LoadWith(p, func(k string) (string, bool) { return "v", k == "X" })
			done <- loaded{cfg, err}
		}()
		var cfg *configs.Config
		var err error
		select {
		case l := <-done:
			cfg, err = l.cfg, l.err
		case <-time.After(5 * time.Second):
			t.Fatalf("Load takes more than 5s on %d bytes: %q", len(data), data)
		}
		if err != nil {
			if cfg != nil {
				t.Fatal("Load returned a config and an error")
			}
			return
		}
		// Whatever Load accepts is valid.
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load accepted a config that Validate refuses: %v", err)
		}
	})
}
