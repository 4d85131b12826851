package store_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
)

// contractCase is one case of the contract every store implementation
// meets. Each case gets a fresh, empty database of the driver under test.
type contractCase struct {
	name string
	run  func(t *testing.T, f *fixture)
}

// TestContract runs the one contract suite, unchanged, against SQLite and
// PostgreSQL.
func TestContract(t *testing.T) {
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			for _, tc := range contractCases {
				t.Run(tc.name, func(t *testing.T) {
					tc.run(t, newFixture(t, driver))
				})
			}
		})
	}
}

var contractCases = []contractCase{
	{"migrate/twice", testMigrateTwice},
	{"migrate/concurrent", testMigrateConcurrent},
	{"key/created-0600", testKeyCreated},
	{"key/missing-on-existing-store", testKeyMissing},
	{"key/different-on-existing-store", testKeyDifferent},
	{"key/existing-file-on-new-store", testKeyAdopted},
	{"key/readable-by-others", testKeyModeRefused},
	{"key/not-loaded-before-migrate", testKeyNotLoaded},
	{"key/reset", testKeyReset},
	{"open/bad-options", testOpenBadOptions},
	{"users/crud", testUsersCRUD},
	{"users/invalid", testUsersInvalid},
	{"users/default-mfa", testUsersDefaultMFA},
	{"app-passwords/secret", testSecret},
	{"app-passwords/labels", testLabels},
	{"app-passwords/scopes", testScopes},
	{"app-passwords/expiry", testExpiry},
	{"app-passwords/limit-concurrent", testLimitConcurrent},
	{"app-passwords/mfa-disabled", testMFADisabled},
	{"app-passwords/default-mfa-creates-row", testDefaultMFACreatesRow},
	{"app-passwords/switched-off", testSwitchedOff},
	{"app-passwords/delete", testDelete},
	{"app-passwords/revoke-all", testRevokeAll},
	{"app-passwords/delete-user", testDeleteUserRemovesAppPasswords},
	{"app-passwords/find", testFind},
	{"app-passwords/touch", testTouch},
	{"app-passwords/existing", testExisting},
	{"audit/record-filter", testAudit},
	{"audit/record-login", testRecordLogin},
	{"audit/structured", testAuditStructured},
	{"audit/page-filters", testAuditPageFilters},
	{"audit/page-across-days", testAuditPageAcrossDays},
	{"audit/page-stale-statistics", testAuditPageStaleStatistics},
	{"audit/retention", testAuditRetention},
	{"audit/maintain-concurrent", testAuditMaintainConcurrent},
	{"audit/journal-batch", testAuditJournalBatch},
	{"login-state", testLoginState},
	{"login-state/with-lockout", testLoginLockoutState},
	{"journal/order-and-read-your-writes", testJournalOrder},
	{"journal/concurrent", testJournalConcurrent},
	{"journal/deleted-app-password", testJournalDeleted},
	{"journal/last-uses", testJournalLastUses},
	{"journal/close-flushes", testJournalCloseFlushes},
	{"journal/idle-flusher", testJournalIdleFlusher},
	{"journal/store-down", testJournalStoreDown},
	{"journal/close-slow-write", testJournalCloseSlowWrite},
	{"journal/close-dead-store", testJournalCloseDeadStore},
	{"journal/close-concurrent-writers", testJournalCloseConcurrentWriters},
	{"lockout/count-shared", testLockoutCount},
	{"lockout/concurrent", testLockoutConcurrent},
	{"lockout/recent-tags", testLockoutRecent},
	{"lockout/success-note", testLockoutNote},
	{"app-passwords/networks", testNetworks},
	{"revocations/listen", testListenRevocations},
}

// embeddedMigrations lists the migrations of driver's folder, in order.
func embeddedMigrations(t *testing.T, driver string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join("migrations", driver))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".sql"); ok {
			out = append(out, name)
		}
	}
	if len(out) < 3 {
		t.Fatalf("migrations/%s holds %q: want at least 0001, 0002 and 0005", driver, out)
	}
	return out
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustErr(t *testing.T, err, want error, text string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want one that matches %q", err, want)
	}
	if text != "" && !strings.Contains(err.Error(), text) {
		t.Fatalf("error text = %q, want it to contain %q", err.Error(), text)
	}
}

func addUser(t *testing.T, s *store.Store, name string, mfa store.MFAState) store.User {
	t.Helper()
	u, err := s.AddUser(ctxT(t), name, mfa)
	if err != nil {
		t.Fatalf("AddUser(%s): %v", name, err)
	}
	return u
}

func create(t *testing.T, s *store.Store, user, label string) (store.AppPassword, string) {
	t.Helper()
	a, secret, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: user, Label: label})
	if err != nil {
		t.Fatalf("CreateAppPassword(%s, %q): %v", user, label, err)
	}
	return a, secret
}

func testMigrateTwice(t *testing.T, f *fixture) {
	s := f.open(t)
	ctx := ctxT(t)
	applied, err := s.Migrate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := embeddedMigrations(t, f.driver); !slices.Equal(applied, want) {
		t.Fatalf("first Migrate applied %q, want %q", applied, want)
	}
	applied, err = s.Migrate(ctx)
	if err != nil || applied != nil {
		t.Fatalf("second Migrate = %q, %v; want nil, nil", applied, err)
	}
	// A new process on the same database migrates nothing either.
	applied, err = f.open(t).Migrate(ctx)
	if err != nil || applied != nil {
		t.Fatalf("Migrate from a second Store = %q, %v; want nil, nil", applied, err)
	}
}

func testMigrateConcurrent(t *testing.T, f *fixture) {
	ctx := ctxT(t)
	stores := []*store.Store{f.open(t), f.open(t), f.open(t)}
	results := make([][]string, len(stores))
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = s.Migrate(ctx)
		}()
	}
	close(start)
	wg.Wait()
	var all []string
	for i := range stores {
		if errs[i] != nil {
			t.Fatalf("Migrate %d: %v", i, errs[i])
		}
		all = append(all, results[i]...)
	}
	if want := embeddedMigrations(t, f.driver); !slices.Equal(all, want) {
		t.Fatalf("concurrent Migrates applied %q in all, want each of %q exactly once", all, want)
	}
	// All three loaded the same key: a secret made through one works
	// through the others.
	addUser(t, stores[0], "alice", store.MFAEnforced)
	_, secret := create(t, stores[1], "alice", "phone")
	if _, err := stores[2].FindAppPassword(ctx, "alice", secret); err != nil {
		t.Fatalf("FindAppPassword through another Store: %v", err)
	}
}

func testKeyCreated(t *testing.T, f *fixture) {
	if _, err := os.Stat(f.keyFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("key file exists before Migrate: %v", err)
	}
	f.migrated(t)
	fi, err := os.Stat(f.keyFile)
	if err != nil {
		t.Fatalf("key file not created: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Fatalf("key file mode = %04o, want 0600", got)
	}
	b, err := os.ReadFile(f.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}\n$`).Match(b) {
		t.Fatalf("key file holds %d bytes, want 64 hex digits and a newline", len(b))
	}
	// Reopening with the same file works and keeps it.
	f.migrated(t)
	if b2, _ := os.ReadFile(f.keyFile); string(b2) != string(b) {
		t.Fatal("second Migrate changed the key file")
	}
}

func testKeyMissing(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFAEnforced)
	create(t, s, "alice", "phone")
	if err := os.Remove(f.keyFile); err != nil {
		t.Fatal(err)
	}
	_, err := f.open(t).Migrate(ctxT(t))
	mustErr(t, err, store.ErrKeyMismatch, `is missing but the store already holds 1 app passwords hashed with a key (fingerprint `)
	mustErr(t, err, store.ErrKeyMismatch, "restore the key file from backup")
	if _, serr := os.Stat(f.keyFile); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("Migrate made a new key file for an existing store (stat: %v)", serr)
	}
}

func testKeyDifferent(t *testing.T, f *fixture) {
	f.migrated(t)
	other := strings.Repeat("ab", 32) + "\n"
	if err := os.WriteFile(f.keyFile, []byte(other), 0o600); err != nil {
		t.Fatal(err)
	}
	s := f.open(t)
	_, err := s.Migrate(ctxT(t))
	mustErr(t, err, store.ErrKeyMismatch, "is not the key that the store's 0 app passwords were hashed with")

	// A key file that cannot be read is not a mismatch: --reset-key must
	// not treat a permission or format problem as a lost key.
	if err := os.WriteFile(f.keyFile, []byte("a 32-character text passphrase!!"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = f.open(t).Migrate(ctxT(t))
	if err == nil || errors.Is(err, store.ErrKeyMismatch) || !strings.Contains(err.Error(), "not a passgate key") {
		t.Fatalf("malformed key file: err = %v, want a format error that is not ErrKeyMismatch", err)
	}
	// The store stays unusable for app passwords.
	_, _, err = s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "alice", Label: "x"})
	mustErr(t, err, store.ErrNoKey, "call Migrate first")
}

func testKeyAdopted(t *testing.T, f *fixture) {
	// A new store adopts a key file that already exists (64 hex digits).
	raw := []byte("0123456789abcdef0123456789ABCDEF")
	if err := os.WriteFile(f.keyFile, []byte(hex.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFAEnforced)
	_, secret := create(t, s, "alice", "phone")
	if b, _ := os.ReadFile(f.keyFile); string(b) != hex.EncodeToString(raw)+"\n" {
		t.Fatal("Migrate rewrote an existing key file")
	}
	h, err := apppass.NewHasher(raw)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.FindAppPassword(ctxT(t), "alice", secret)
	if err != nil {
		t.Fatal(err)
	}
	if !apppass.Equal(a.Hash, h.Hash("alice", secret)) {
		t.Fatal("stored hash is not HMAC under the key file's key")
	}
}

func testKeyModeRefused(t *testing.T, f *fixture) {
	if err := os.WriteFile(f.keyFile, []byte(strings.Repeat("cd", 32)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := f.open(t).Migrate(ctxT(t))
	mustErr(t, err, store.ErrInvalid, "chmod 600")
}

func testKeyNotLoaded(t *testing.T, f *fixture) {
	f.migrated(t)
	s := f.open(t) // no Migrate
	_, _, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "alice", Label: "x"})
	mustErr(t, err, store.ErrNoKey, "call Migrate first")
	_, err = s.FindAppPassword(ctxT(t), "alice", "abcdabcdabcdabcd")
	mustErr(t, err, store.ErrNoKey, "call Migrate first")
}

func testKeyReset(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFAEnforced)
	create(t, s, "alice", "phone")
	create(t, s, "alice", "laptop")
	if err := os.Remove(f.keyFile); err != nil {
		t.Fatal(err)
	}
	s2 := f.open(t)
	n, err := s2.ResetKey(ctxT(t))
	if err != nil || n != 2 {
		t.Fatalf("ResetKey = %d, %v; want 2, nil", n, err)
	}
	if _, err := os.Stat(f.keyFile); err != nil {
		t.Fatalf("ResetKey made no new key file: %v", err)
	}
	_, secret := create(t, s2, "alice", "phone")
	if _, err := f.migrated(t).FindAppPassword(ctxT(t), "alice", secret); err != nil {
		t.Fatalf("after ResetKey: %v", err)
	}
}

func testOpenBadOptions(t *testing.T, f *fixture) {
	tests := []struct {
		name string
		mod  func(*store.Options)
		text string
	}{
		{"driver", func(o *store.Options) { o.Driver = "mysql" }, `store.driver "mysql" is not known`},
		{"dsn", func(o *store.Options) { o.DSN = "" }, "store.dsn is empty"},
		{"sqlite-memory", func(o *store.Options) { o.Driver, o.DSN = "sqlite", ":memory:" }, "in-memory SQLite database"},
		{"limit", func(o *store.Options) { o.MaxAppPasswords = -1 }, "policy.max_app_passwords is -1"},
		{"default-mfa", func(o *store.Options) { o.DefaultMFA = "maybe" }, "policy.default_mfa"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := store.Open(ctxT(t), f.options(tc.mod))
			mustErr(t, err, store.ErrInvalid, tc.text)
		})
	}
	s := f.open(t)
	if s.Driver() != f.driver || s.MaxAppPasswords() != 40 {
		t.Fatalf("Driver, MaxAppPasswords = %q, %d; want %q, 40", s.Driver(), s.MaxAppPasswords(), f.driver)
	}
}

func testUsersCRUD(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	u := addUser(t, s, "Alice", store.MFAEnabled)
	if u.Name != "Alice" || u.MFA != store.MFAEnabled || u.CreatedAt.IsZero() || u.CreatedAt.Location() != time.UTC {
		t.Fatalf("AddUser = %+v", u)
	}
	_, err := s.AddUser(ctx, "ALICE", store.MFAEnforced)
	mustErr(t, err, store.ErrExists, "user ALICE already exists")
	addUser(t, s, "bob@example.test", store.MFADisabled)

	got, err := s.GetUser(ctx, "aLiCe")
	if err != nil || got != u {
		t.Fatalf("GetUser(aLiCe) = %+v, %v; want %+v", got, err, u)
	}
	_, err = s.GetUser(ctx, "carol")
	mustErr(t, err, store.ErrNotFound, `add it with "passgate user add carol"`)

	list, err := s.ListUsers(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "Alice" || list[1].Name != "bob@example.test" {
		t.Fatalf("ListUsers = %+v, %v", list, err)
	}

	u2, err := s.SetMFA(ctx, "ALICE", store.MFAEnforced)
	if err != nil || u2.MFA != store.MFAEnforced || u2.Name != "Alice" || u2.CreatedAt != u.CreatedAt {
		t.Fatalf("SetMFA = %+v, %v", u2, err)
	}
	if st, err := s.UserMFA(ctx, "alice"); err != nil || st != store.MFAEnforced {
		t.Fatalf("UserMFA = %q, %v", st, err)
	}
	// SetMFA creates a missing row.
	if c, err := s.SetMFA(ctx, "Carol", store.MFAEnabled); err != nil || c.Name != "Carol" || c.MFA != store.MFAEnabled {
		t.Fatalf("SetMFA(new) = %+v, %v", c, err)
	}
	_, err = s.SetMFA(ctx, "carol", "sometimes")
	mustErr(t, err, store.ErrInvalid, `unknown MFA state "sometimes"`)

	if err := s.DeleteUser(ctx, "aLICE"); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetUser(ctx, "alice")
	mustErr(t, err, store.ErrNotFound, "")
	mustErr(t, s.DeleteUser(ctx, "alice"), store.ErrNotFound, "user alice not found")
	if st, err := s.UserMFA(ctx, "alice"); err != nil || st != store.MFADisabled {
		t.Fatalf("UserMFA after delete = %q, %v; want the default, disabled", st, err)
	}
}

func testUsersInvalid(t *testing.T, f *fixture) {
	s := f.migrated(t)
	for _, name := range []string{"", "al ice", "bob\n", strings.Repeat("x", 257), "\xff"} {
		_, err := s.AddUser(ctxT(t), name, store.MFAEnabled)
		mustErr(t, err, store.ErrInvalid, "user name")
	}
	_, err := s.AddUser(ctxT(t), "dave", "on")
	mustErr(t, err, store.ErrInvalid, `unknown MFA state "on"`)
}

func testUsersDefaultMFA(t *testing.T, f *fixture) {
	s := f.migrated(t, func(o *store.Options) { o.DefaultMFA = store.MFAEnforced })
	ctx := ctxT(t)
	if st, err := s.UserMFA(ctx, "nobody"); err != nil || st != store.MFAEnforced {
		t.Fatalf("UserMFA(no row) = %q, %v; want enforced (Options.DefaultMFA)", st, err)
	}
	// AddUser with "" takes the default too.
	if u := addUser(t, s, "erin", ""); u.MFA != store.MFAEnforced {
		t.Fatalf("AddUser(erin, \"\").MFA = %q, want enforced", u.MFA)
	}
	if _, err := s.GetUser(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UserMFA created a row: %v", err)
	}
}

var secretRE = regexp.MustCompile(`^[a-z]{16}$`)

func testSecret(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "Alice", store.MFAEnforced)
	a, secret, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "ALICE", Label: "Outlook 2010"})
	if err != nil {
		t.Fatal(err)
	}
	if !secretRE.MatchString(secret) {
		t.Fatalf("secret %q is not 16 lowercase letters", secret)
	}
	if a.ID == 0 || a.User != "Alice" || a.Label != "Outlook 2010" || a.CreatedAt.IsZero() || a.ExpiresAt != nil || a.LastUsedAt != nil {
		t.Fatalf("CreateAppPassword = %+v", a)
	}
	if len(a.Hash) != 32 || strings.Contains(string(a.Hash), secret) {
		t.Fatalf("hash = %x, want 32 bytes of HMAC", a.Hash)
	}
	list, err := s.ListAppPasswords(ctxT(t), "alice")
	if err != nil || len(list) != 1 || list[0].ID != a.ID || list[0].Label != a.Label || !list[0].CreatedAt.Equal(a.CreatedAt) {
		t.Fatalf("ListAppPasswords = %+v, %v", list, err)
	}
	if empty, err := s.ListAppPasswords(ctxT(t), "nobody"); err != nil || empty == nil || len(empty) != 0 {
		t.Fatalf("ListAppPasswords(unknown) = %#v, %v; want an empty list", empty, err)
	}
}

func testLabels(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFAEnforced)
	addUser(t, s, "bob", store.MFAEnforced)
	tests := []struct {
		name, user, label string
		want              error
		text              string
	}{
		{"ok/first", "alice", "Phone", nil, ""},
		{"ok/64-characters", "alice", strings.Repeat("é", 64), nil, ""},
		{"ok/same-label-other-user", "bob", "phone", nil, ""},
		{"fail/empty", "alice", "", store.ErrInvalid, "label is empty"},
		{"fail/blank", "alice", "   ", store.ErrInvalid, "label is empty"},
		{"fail/65-characters", "alice", strings.Repeat("é", 65), store.ErrInvalid, "label has 65 characters: at most 64"},
		{"fail/control", "alice", "a\tb", store.ErrInvalid, "control character"},
		{"fail/duplicate-other-case", "ALICE", "PHONE", store.ErrLabelTaken, `label "PHONE" is already in use (as "Phone")`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: tc.user, Label: tc.label})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			mustErr(t, err, tc.want, tc.text)
		})
	}
}

func testScopes(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFAEnforced)
	tests := []struct {
		name   string
		scopes []string
		want   []string
		text   string
	}{
		{"nil-means-all", nil, []string{"imap", "smtp", "ldap"}, ""},
		{"canonical-order", []string{"SMTP", "imap", "smtp"}, []string{"imap", "smtp"}, ""},
		{"one", []string{"ldap"}, []string{"ldap"}, ""},
		{"fail/unknown", []string{"imap", "pop3"}, nil, `unknown scope "pop3"`},
		{"fail/empty", []string{}, nil, "no scopes given"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, _, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "alice", Label: fmt.Sprint("l", i), Scopes: tc.scopes})
			if tc.want == nil {
				mustErr(t, err, store.ErrInvalid, tc.text)
				return
			}
			if err != nil || !slices.Equal(a.Scopes, tc.want) {
				t.Fatalf("scopes = %q, %v; want %q", a.Scopes, err, tc.want)
			}
			list, _ := s.ListAppPasswords(ctxT(t), "alice")
			if got := list[len(list)-1]; !slices.Equal(got.Scopes, tc.want) || got.HasScope("imap") != slices.Contains(tc.want, "imap") {
				t.Fatalf("stored scopes = %q, want %q", got.Scopes, tc.want)
			}
		})
	}
}

func testExpiry(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFAEnforced)
	loc := time.FixedZone("CET", 3600)
	exp := time.Now().In(loc).Add(90 * 24 * time.Hour)
	a, secret, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "alice", Label: "temp", ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	want := exp.UTC().Truncate(time.Microsecond)
	if a.ExpiresAt == nil || !a.ExpiresAt.Equal(want) || a.ExpiresAt.Location() != time.UTC {
		t.Fatalf("ExpiresAt = %v, want %v in UTC", a.ExpiresAt, want)
	}
	found, err := s.FindAppPassword(ctxT(t), "alice", secret)
	if err != nil || found.ExpiresAt == nil || !found.ExpiresAt.Equal(want) {
		t.Fatalf("FindAppPassword.ExpiresAt = %v, %v; want %v", found.ExpiresAt, err, want)
	}
	if found.Expired(time.Now()) || !found.Expired(exp.Add(time.Second)) {
		t.Fatal("Expired disagrees with the stored expiry")
	}
	past := time.Now().Add(-time.Minute)
	_, _, err = s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "alice", Label: "old", ExpiresAt: &past})
	mustErr(t, err, store.ErrInvalid, "is in the past")
}

func testLimitConcurrent(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFAEnforced)
	const tries = 50
	errs := make([]error, tries)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, _, errs[i] = s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "alice", Label: fmt.Sprint("device ", i)})
		}()
	}
	close(start)
	wg.Wait()
	ok, limited := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, store.ErrLimitReached) && strings.Contains(err.Error(), "limit reached (40): delete an app password first"):
			limited++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 40 || limited != 10 {
		t.Fatalf("%d created, %d refused at the limit; want 40 and 10", ok, limited)
	}
	if list, err := s.ListAppPasswords(ctxT(t), "alice"); err != nil || len(list) != 40 {
		t.Fatalf("ListAppPasswords: %d, %v; want 40", len(list), err)
	}
	// A configured limit is honoured and named.
	s3 := f.migrated(t, func(o *store.Options) { o.MaxAppPasswords = 3 })
	addUser(t, s3, "bob", store.MFAEnforced)
	for i := range 3 {
		create(t, s3, "bob", fmt.Sprint(i))
	}
	_, _, err := s3.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "bob", Label: "x"})
	mustErr(t, err, store.ErrLimitReached, "limit reached (3): delete an app password first")
	// Deleting one makes room.
	if _, err := s3.DeleteAppPassword(ctxT(t), "bob", "0"); err != nil {
		t.Fatal(err)
	}
	create(t, s3, "bob", "x")
}

func testMFADisabled(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "alice", store.MFADisabled)
	_, _, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "alice", Label: "phone"})
	mustErr(t, err, store.ErrMFADisabled, `MFA is disabled for alice: turn it on with "passgate user set-mfa alice enabled"`)
	// A user without a row has the default state, disabled here; no row is made.
	_, _, err = s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "zoe", Label: "phone"})
	mustErr(t, err, store.ErrMFADisabled, `MFA is disabled for zoe: turn it on with "passgate user set-mfa zoe enabled"`)
	if _, err := s.GetUser(ctxT(t), "zoe"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused creation made a user row: %v", err)
	}
	if _, err := s.SetMFA(ctxT(t), "alice", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	create(t, s, "alice", "phone")
}

func testDefaultMFACreatesRow(t *testing.T, f *fixture) {
	s := f.migrated(t, func(o *store.Options) { o.DefaultMFA = store.MFAEnabled })
	a, _, err := s.CreateAppPassword(ctxT(t), store.NewAppPassword{User: "Zoe", Label: "phone"})
	if err != nil || a.User != "Zoe" {
		t.Fatalf("CreateAppPassword(no row, default enabled) = %+v, %v", a, err)
	}
	u, err := s.GetUser(ctxT(t), "zoe")
	if err != nil || u.MFA != store.MFAEnabled {
		t.Fatalf("row after creation = %+v, %v; want MFA enabled", u, err)
	}
}

func testSwitchedOff(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	if allow, err := s.AllowAppPasswords(ctx); err != nil || !allow {
		t.Fatalf("AllowAppPasswords on a new store = %v, %v; want true", allow, err)
	}
	addUser(t, s, "alice", store.MFAEnforced)
	create(t, s, "alice", "phone")
	create(t, s, "alice", "laptop")
	if err := s.SetAllowAppPasswords(ctx, false); err != nil {
		t.Fatal(err)
	}
	if allow, err := s.AllowAppPasswords(ctx); err != nil || allow {
		t.Fatalf("AllowAppPasswords = %v, %v; want false", allow, err)
	}
	_, _, err := s.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "tablet"})
	mustErr(t, err, store.ErrAppPasswordsDisabled, `app passwords are switched off: "passgate settings set allow-app-passwords true" turns them on`)
	if list, err := s.ListAppPasswords(ctx, "alice"); err != nil || len(list) != 2 {
		t.Fatalf("ListAppPasswords while switched off = %d, %v; want 2", len(list), err)
	}
	if _, err := s.DeleteAppPassword(ctx, "alice", "PHONE"); err != nil {
		t.Fatalf("DeleteAppPassword while switched off: %v", err)
	}
	if n, err := s.RevokeAll(ctx, "alice"); err != nil || n != 1 {
		t.Fatalf("RevokeAll while switched off = %d, %v", n, err)
	}
	if err := s.SetAllowAppPasswords(ctx, true); err != nil {
		t.Fatal(err)
	}
	create(t, s, "alice", "tablet")
}

func testDelete(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	a, secret := create(t, s, "alice", "Outlook")
	create(t, s, "alice", "Phone")
	got, err := s.DeleteAppPassword(ctx, "ALICE", "outlook")
	if err != nil || got.ID != a.ID || got.Label != "Outlook" {
		t.Fatalf("DeleteAppPassword = %+v, %v; want the Outlook one", got, err)
	}
	_, err = s.FindAppPassword(ctx, "alice", secret)
	mustErr(t, err, store.ErrNotFound, "")
	_, err = s.DeleteAppPassword(ctx, "alice", "outlook")
	mustErr(t, err, store.ErrNotFound, `alice has no app password labelled "outlook"`)
	if list, _ := s.ListAppPasswords(ctx, "alice"); len(list) != 1 || list[0].Label != "Phone" {
		t.Fatalf("left after delete: %+v", list)
	}
	// The label is free again.
	create(t, s, "alice", "OUTLOOK")
}

func testRevokeAll(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	addUser(t, s, "bob", store.MFAEnforced)
	for i := range 3 {
		create(t, s, "alice", fmt.Sprint(i))
	}
	_, bobSecret := create(t, s, "bob", "phone")
	if n, err := s.RevokeAll(ctx, "Alice"); err != nil || n != 3 {
		t.Fatalf("RevokeAll = %d, %v; want 3", n, err)
	}
	if n, err := s.RevokeAll(ctx, "alice"); err != nil || n != 0 {
		t.Fatalf("RevokeAll again = %d, %v; want 0", n, err)
	}
	if _, err := s.FindAppPassword(ctx, "bob", bobSecret); err != nil {
		t.Fatalf("another user's app password was revoked: %v", err)
	}
}

func testDeleteUserRemovesAppPasswords(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	a, secret := create(t, s, "alice", "phone")
	if err := s.DeleteUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	_, err := s.FindAppPassword(ctx, "alice", secret)
	mustErr(t, err, store.ErrNotFound, "")
	if ex, err := s.ExistingAppPasswords(ctx, []int64{a.ID}); err != nil || ex[a.ID] {
		t.Fatalf("ExistingAppPasswords after DeleteUser = %v, %v", ex, err)
	}
	// A new user of the same name starts from nothing.
	addUser(t, s, "alice", store.MFAEnforced)
	if list, err := s.ListAppPasswords(ctx, "alice"); err != nil || len(list) != 0 {
		t.Fatalf("app passwords of a re-created user: %+v, %v", list, err)
	}
}

func testFind(t *testing.T, f *fixture) {
	s := f.migrated(t)
	addUser(t, s, "Alice", store.MFAEnforced)
	addUser(t, s, "bob", store.MFAEnforced)
	a, secret := create(t, s, "alice", "phone")
	create(t, s, "alice", "laptop")
	_, bobSecret := create(t, s, "bob", "phone")
	wrong := []byte(secret)
	wrong[0] = 'a' + (wrong[0]-'a'+1)%26
	tests := []struct {
		name, user, input string
		ok                bool
	}{
		{"ok/plain", "alice", secret, true},
		{"ok/formatted-upper", "ALICE", strings.ToUpper(apppass.Format(secret)), true},
		{"ok/extra-spaces", "alice", " " + strings.Join(strings.Split(secret, ""), " ") + " ", true},
		{"fail/wrong-secret", "alice", string(wrong), false},
		{"fail/other-users-secret", "alice", bobSecret, false},
		{"fail/secret-of-other-user-name", "bob", secret, false},
		{"fail/unknown-user", "carol", secret, false},
		{"fail/garbage", "alice", "x'; DROP TABLE app_passwords; --", false},
		{"fail/empty", "alice", "", false},
		{"fail/prefix", "alice", secret[:15], false},
		{"fail/user-invalid-utf8", "alice\xff", secret, false},
		{"fail/user-with-nul", "alice\x00", secret, false},
		{"fail/user-empty", "", secret, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.FindAppPassword(ctxT(t), tc.user, tc.input)
			if !tc.ok {
				mustErr(t, err, store.ErrNotFound, "matches")
				return
			}
			if err != nil || got.ID != a.ID || got.User != "Alice" || !slices.Equal(got.Scopes, store.AllScopes()) {
				t.Fatalf("FindAppPassword = %+v, %v; want id %d", got, err, a.ID)
			}
		})
	}
}

func testTouch(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	a, secret := create(t, s, "alice", "phone")
	at := time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.FixedZone("X", -7200))
	u := store.Usage{At: at, Addr: "203.0.113.9:51234", Proto: "imap", Client: "Outlook 2010"}
	if err := s.TouchAppPassword(ctx, a.ID, u); err != nil {
		t.Fatal(err)
	}
	got, err := s.FindAppPassword(ctx, "alice", secret)
	if err != nil {
		t.Fatal(err)
	}
	want := at.UTC().Truncate(time.Microsecond)
	if got.LastUsedAt == nil || !got.LastUsedAt.Equal(want) || got.LastUsedAt.Location() != time.UTC ||
		got.LastUsedAddr != u.Addr || got.LastUsedProto != u.Proto || got.LastUsedClient != u.Client {
		t.Fatalf("after Touch: %+v (LastUsedAt %v), want %+v at %v", got, got.LastUsedAt, u, want)
	}
	before := time.Now().Add(-time.Second)
	if err := s.TouchAppPassword(ctx, a.ID, store.Usage{Proto: "smtp"}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.FindAppPassword(ctx, "alice", secret)
	if got.LastUsedAt == nil || got.LastUsedAt.Before(before) || got.LastUsedProto != "smtp" {
		t.Fatalf("Touch with zero time: LastUsedAt %v, proto %q; want now, smtp", got.LastUsedAt, got.LastUsedProto)
	}
	mustErr(t, s.TouchAppPassword(ctx, a.ID+1000, u), store.ErrNotFound, "no longer exists")
	// A client chooses its ID name: odd bytes are stored cleaned, not refused.
	odd := store.Usage{Addr: "203.0.113.9:1", Proto: "imap", Client: "bad\xff\x00name" + strings.Repeat("x", 300)}
	if err := s.TouchAppPassword(ctx, a.ID, odd); err != nil {
		t.Fatalf("Touch with an odd client name: %v", err)
	}
	got, _ = s.FindAppPassword(ctx, "alice", secret)
	if !strings.HasPrefix(got.LastUsedClient, "bad\uFFFD?name") || len(got.LastUsedClient) > 256 {
		t.Fatalf("odd client name stored as %q", got.LastUsedClient)
	}
}

func testExisting(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	a1, _ := create(t, s, "alice", "one")
	a2, _ := create(t, s, "alice", "two")
	a3, _ := create(t, s, "alice", "three")
	if _, err := s.DeleteAppPassword(ctx, "alice", "two"); err != nil {
		t.Fatal(err)
	}
	// Ids are never reused, even for the newest row deleted.
	if _, err := s.DeleteAppPassword(ctx, "alice", "three"); err != nil {
		t.Fatal(err)
	}
	a4, _ := create(t, s, "alice", "four")
	if a4.ID == a3.ID || a4.ID == a2.ID {
		t.Fatalf("id %d of a deleted app password was reused", a4.ID)
	}
	ids := []int64{a1.ID, a2.ID, a3.ID, a4.ID, 999999}
	for i := range 1200 { // more than one chunk
		ids = append(ids, int64(100000+i))
	}
	got, err := s.ExistingAppPasswords(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]bool{a1.ID: true, a4.ID: true}
	if len(got) != len(want) || !got[a1.ID] || !got[a4.ID] {
		t.Fatalf("ExistingAppPasswords = %v, want %v", got, want)
	}
	if got, err := s.ExistingAppPasswords(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("ExistingAppPasswords(nil) = %v, %v", got, err)
	}
}

func testAudit(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	events := []store.AuditEvent{
		{Time: base, Actor: "cli:root", Action: "user.add", Subject: "Alice", Outcome: "success"},
		{Time: base.Add(time.Minute), Actor: "imap:203.0.113.9:51234", Action: "login", Subject: "bob", Outcome: "failure", Detail: "wrong secret"},
		{Time: base.Add(2 * time.Minute).In(time.FixedZone("X", 3600)), Actor: "imap:203.0.113.9:51234", Action: "login", Subject: "alice", Outcome: "success", Detail: "app password 1"},
		{Time: base.Add(3 * time.Minute), Actor: "cli:root", Action: "app-password.delete", Subject: "ALICE", Outcome: "success"},
	}
	for _, ev := range events {
		if err := s.Record(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	// A user name typed by a client may be anything: the event is kept.
	if err := s.Record(ctx, store.AuditEvent{Time: base.Add(-time.Hour), Actor: "imap:203.0.113.9:1", Action: "login", Subject: "x\xff\x00y", Outcome: "failure"}); err != nil {
		t.Fatalf("Record with an odd subject: %v", err)
	}
	if evs, err := s.Audit(ctx, store.AuditFilter{User: "X\xff\x00Y"}); err != nil || len(evs) != 1 || evs[0].Subject != "x\uFFFD?y" {
		t.Fatalf("odd subject read back as %+v, %v", evs, err)
	}
	before := time.Now().Add(-time.Second)
	if err := s.Record(ctx, store.AuditEvent{Actor: "cli:root", Action: "settings.set", Subject: "", Outcome: "success"}); err != nil {
		t.Fatal(err)
	}
	actions := func(evs []store.AuditEvent) string {
		var a []string
		for _, e := range evs {
			a = append(a, e.Action+"/"+e.Subject)
		}
		return strings.Join(a, " ")
	}
	tests := []struct {
		name string
		f    store.AuditFilter
		want string
	}{
		{"all-newest-last", store.AuditFilter{}, "login/x\uFFFD?y user.add/Alice login/bob login/alice app-password.delete/ALICE settings.set/"},
		{"user-any-case", store.AuditFilter{User: "aLiCe"}, "user.add/Alice login/alice app-password.delete/ALICE"},
		{"since", store.AuditFilter{Since: base.Add(time.Minute)}, "login/bob login/alice app-password.delete/ALICE settings.set/"},
		{"user-and-since", store.AuditFilter{User: "alice", Since: base.Add(90 * time.Second)}, "login/alice app-password.delete/ALICE"},
		{"limit-keeps-newest", store.AuditFilter{User: "alice", Limit: 2}, "login/alice app-password.delete/ALICE"},
		{"nothing", store.AuditFilter{User: "carol"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Audit(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if a := actions(got); a != tc.want {
				t.Fatalf("Audit(%+v) = %q, want %q", tc.f, a, tc.want)
			}
		})
	}
	all, _ := s.Audit(ctx, store.AuditFilter{})
	if len(all) != 6 {
		t.Fatalf("%d events, want 6", len(all))
	}
	if e := all[2]; e.ID == 0 || !e.Time.Equal(base.Add(time.Minute)) || e.Time.Location() != time.UTC ||
		e.Actor != "imap:203.0.113.9:51234" || e.Outcome != "failure" || e.Detail != "wrong secret" {
		t.Fatalf("event read back as %+v", e)
	}
	if e := all[5]; e.Time.Before(before) || e.Time.After(time.Now().Add(time.Second)) {
		t.Fatalf("zero Time recorded as %v, want now", e.Time)
	}
}

func testRecordLogin(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	a, secret := create(t, s, "alice", "phone")
	ev := store.AuditEvent{Actor: "imap:203.0.113.9:1", Action: "login", Subject: "alice", Outcome: "success", Detail: "credential=app-password"}
	u := store.Usage{Addr: "203.0.113.9:1", Proto: "imap", Client: "K-9"}
	if err := s.RecordLogin(ctx, a.ID, u, ev); err != nil {
		t.Fatal(err)
	}
	got, err := s.FindAppPassword(ctx, "alice", secret)
	if err != nil || got.LastUsedClient != "K-9" || got.LastUsedAt == nil {
		t.Fatalf("after RecordLogin: %+v, %v", got, err)
	}
	evs, err := s.Audit(ctx, store.AuditFilter{User: "alice"})
	if err != nil || len(evs) != 1 || evs[0].Action != "login" || evs[0].Outcome != "success" {
		t.Fatalf("audit after RecordLogin: %+v, %v", evs, err)
	}
	// Deleted during the login: nothing is recorded, ErrNotFound.
	if _, err := s.DeleteAppPassword(ctx, "alice", "phone"); err != nil {
		t.Fatal(err)
	}
	mustErr(t, s.RecordLogin(ctx, a.ID, u, ev), store.ErrNotFound, "no longer exists")
	if evs, _ := s.Audit(ctx, store.AuditFilter{User: "alice"}); len(evs) != 1 {
		t.Fatalf("a failed RecordLogin left %d audit events, want 1", len(evs))
	}
}
