package integration

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestDebianPackage builds the .deb with packaging/build-deb.sh (nfpm, no
// Docker), installs it with apt-get as a new operator would, checks its
// files, owners and modes, runs passgate as the packaged user, upgrades it
// to a second build and goes back (docs/deployment.md, step 7: the edited
// conffile, the store and the key stay), and purges it again, leaving only
// the passgate system user (which Debian policy keeps). It needs root,
// like the test command.
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestDebianPackage installs a package: run the test command as root")
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "passgate").CombinedOutput(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("a passgate package is installed already (%s): the test would replace it; remove it first", out)
	}
	run := func(name string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(name string, args ...string) string {
		t.Helper()
		out, err := run(name, args...)
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
		return out
	}
	// apt-get waits for dpkg's lock instead of failing when another
	// install holds it.
	apt := []string{"-o", "DPkg::Lock::Timeout=600", "-y", "-q"}

	out := must("../packaging/build-deb.sh")
	debs, err := filepath.Glob("../dist/passgate_*.deb")
	if err != nil || len(debs) != 1 {
		t.Fatalf("build-deb.sh made %v (%v):\n%s", debs, err, out)
	}
	// Kept apart: the second build below replaces dist/passgate_*.deb.
	deb := filepath.Join(t.TempDir(), filepath.Base(debs[0]))
	if err := os.Rename(debs[0], deb); err != nil {
		t.Fatal(err)
	}
	installed := false
	t.Cleanup(func() {
		if installed {
			run("apt-get", append(apt, "purge", "passgate")...)
		}
	})
	out = must("apt-get", append(apt, "install", deb)...)
	installed = true
	if !strings.Contains(out, "passgate is installed and NOT started") {
		t.Errorf("postinst did not say what to do next:\n%s", out)
	}

	pg, err := user.Lookup("passgate")
	if err != nil {
		t.Fatalf("no passgate user: %v", err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	if uid >= 1000 || uid == 0 {
		t.Errorf("passgate's uid %d is not a system uid", uid)
	}
	if pw := must("getent", "passwd", "passgate"); !strings.HasSuffix(strings.TrimSpace(pw), ":/var/lib/passgate:/usr/sbin/nologin") {
		t.Errorf("passgate's account: %q", pw)
	}
	for _, f := range []struct {
		path     string
		mode     fs.FileMode
		uid, gid int
	}{
		{"/usr/bin/passgate", 0o755, 0, 0},
		{"/lib/systemd/system/passgate.service", 0o644, 0, 0},
		{"/etc/passgate", fs.ModeDir | 0o750, 0, gid},
		{"/etc/passgate/passgate.yaml", 0o640, 0, gid},
		{"/var/lib/passgate", fs.ModeDir | 0o700, uid, gid},
		{"/usr/share/doc/passgate/examples/passgate.example.yaml", 0o644, 0, 0},
		{"/usr/share/doc/passgate/examples/haproxy.cfg", 0o644, 0, 0},
		{"/usr/share/doc/passgate/deployment.md", 0o644, 0, 0},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != f.mode || int(st.Uid) != f.uid || int(st.Gid) != f.gid {
			t.Errorf("%s: %v %d:%d, want %v %d:%d", f.path, fi.Mode(), st.Uid, st.Gid, f.mode, f.uid, f.gid)
		}
	}
	if cf := must("dpkg-query", "-W", "-f=${Conffiles}", "passgate"); !strings.Contains(cf, "/etc/passgate/passgate.yaml") {
		t.Errorf("passgate.yaml is not a conffile: %q", cf)
	}
	unit := must("cat", "/lib/systemd/system/passgate.service")
	for _, want := range []string{
		"ExecStartPre=/usr/bin/passgate check-config --config /etc/passgate/passgate.yaml",
		"ExecStart=/usr/bin/passgate serve --config /etc/passgate/passgate.yaml",
		"User=passgate", "StateDirectory=passgate", "WorkingDirectory=/var/lib/passgate",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	// Nothing enabled or started.
	if _, err := os.Stat("/etc/systemd/system/multi-user.target.wants/passgate.service"); err == nil {
		t.Error("the package enabled the service")
	}
	if out, err := run("pgrep", "-u", "passgate"); err == nil {
		t.Errorf("processes of passgate run after the install: %s", out)
	}

	// As the packaged user.
	if v := must("runuser", "-u", "passgate", "--", "passgate", "version"); !strings.HasPrefix(v, "passgate ") || !strings.Contains(v, "go:     go1.") {
		t.Errorf("passgate version: %q", v)
	}
	out, err = run("runuser", "-u", "passgate", "--", "passgate", "check-config", "--config", "/etc/passgate/passgate.yaml")
	if err == nil || !strings.Contains(out, "/etc/passgate/tls/fullchain.pem") || !strings.Contains(out, "/etc/passgate/dovecot-master.secret") {
		t.Errorf("check-config of the shipped file before its certificate and secret exist: %v\n%s", err, out)
	}
	// The administrator provides them, readable by group passgate.
	const secret = "master-secret-for-the-package-test"
	must("install", "-d", "-m", "0750", "-g", "passgate", "/etc/passgate/tls")
	must("install", "-m", "0644", env.certs.CertFile, "/etc/passgate/tls/fullchain.pem")
	must("install", "-m", "0640", "-g", "passgate", env.certs.KeyFile, "/etc/passgate/tls/privkey.pem")
	if err := os.WriteFile("/etc/passgate/dovecot-master.secret", []byte(secret+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	must("chgrp", "passgate", "/etc/passgate/dovecot-master.secret")
	out = must("runuser", "-u", "passgate", "--", "passgate", "check-config", "--config", "/etc/passgate/passgate.yaml")
	if !strings.Contains(out, "configuration OK: /etc/passgate/passgate.yaml") || strings.Contains(out, secret) {
		t.Errorf("check-config with the files in place: %q", out)
	}
	must("runuser", "-u", "passgate", "--", "passgate", "migrate", "--config", "/etc/passgate/passgate.yaml")
	must("runuser", "-u", "passgate", "--", "passgate", "user", "add", "alice", "--mfa", "enabled", "--config", "/etc/passgate/passgate.yaml")
	for _, f := range []string{"/var/lib/passgate/passgate.db", "/var/lib/passgate/passgate.key"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != 0o600 || int(st.Uid) != uid {
			t.Errorf("%s: %v uid %d, want 0600 passgate", f, fi.Mode(), st.Uid)
		}
	}

	// Upgrade to a newer build over the installed one, as step 7 of the
	// guide does, with the configuration edited by the administrator;
	// then back to the older one.
	const edited = "# edited by the administrator\n"
	f, err := os.OpenFile("/etc/passgate/passgate.yaml", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(edited); err != nil {
		t.Fatal(err)
	}
	f.Close()
	key, err := os.ReadFile("/var/lib/passgate/passgate.key")
	if err != nil {
		t.Fatal(err)
	}
	oldVersion := must("dpkg-query", "-W", "-f=${Version}", "passgate")
	newVersion := oldVersion + "+1"
	must("../packaging/build-deb.sh", newVersion)
	debs, err = filepath.Glob("../dist/passgate_*.deb")
	if err != nil || len(debs) != 1 {
		t.Fatalf("build-deb.sh %s made %v (%v)", newVersion, debs, err)
	}
	newDeb, err := filepath.Abs(debs[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name, deb, version string
		flags              []string
	}{
		{"upgrade", newDeb, newVersion, nil},
		{"downgrade", deb, oldVersion, []string{"--allow-downgrades"}},
	} {
		out := must("apt-get", append(append(apt, step.flags...), "install", step.deb)...)
		if v := must("dpkg-query", "-W", "-f=${Version}", "passgate"); v != step.version {
			t.Fatalf("%s: version %q installed, want %q:\n%s", step.name, v, step.version, out)
		}
		if strings.Contains(out, "passgate is installed and NOT started") {
			t.Errorf("%s: postinst repeats the first install's message:\n%s", step.name, out)
		}
		if conf, err := os.ReadFile("/etc/passgate/passgate.yaml"); err != nil || !strings.HasSuffix(string(conf), edited) {
			t.Errorf("%s: the edited conffile was not kept (%v)", step.name, err)
		}
		if k, err := os.ReadFile("/var/lib/passgate/passgate.key"); err != nil || string(k) != string(key) {
			t.Errorf("%s: the key file changed (%v)", step.name, err)
		}
		if users := must("runuser", "-u", "passgate", "--", "passgate", "user", "list", "--config", "/etc/passgate/passgate.yaml"); !strings.Contains(users, "alice") {
			t.Errorf("%s: the store lost alice: %q", step.name, users)
		}
	}

	// Purge: nothing left but the system user.
	must("apt-get", append(apt, "purge", "passgate")...)
	installed = false
	for _, p := range []string{"/usr/bin/passgate", "/lib/systemd/system/passgate.service", "/etc/passgate", "/var/lib/passgate", "/usr/share/doc/passgate"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is left after purge", p)
		}
	}
	if out, err := run("dpkg-query", "-W", "-f=${Status}", "passgate"); err == nil && !strings.Contains(out, "not-installed") {
		t.Errorf("dpkg still knows passgate after purge: %q", out)
	}
	if _, err := user.Lookup("passgate"); err != nil {
		t.Errorf("the passgate system user was removed (%v); Debian policy keeps it", err)
	}
	fmt.Fprintln(os.Stderr, "deb test: built and purged", filepath.Base(deb))
}
