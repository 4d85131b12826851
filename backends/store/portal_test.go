package store_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// TestPortalContract runs the contract of the portal's tables against
// SQLite and PostgreSQL.
func TestPortalContract(t *testing.T) {
	cases := []contractCase{
		{"password-hash", testPasswordHash},
		{"totp/sealed-and-once", testTOTP},
		{"totp/step-concurrent", testTOTPStepConcurrent},
		{"recovery-codes/once", testRecoveryCodes},
		{"webauthn/crud", testWebAuthn},
		{"sessions/crud", testWebSessions},
		{"delete-user/removes-portal-rows", testDeleteUserPortal},
	}
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					tc.run(t, newFixture(t, driver))
				})
			}
		})
	}
}

func testPasswordHash(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	_, err := s.PasswordHash(ctx, "alice")
	mustErr(t, err, store.ErrNotFound, "passgate user set-password alice")
	for _, h := range []string{"$argon2id$first", "$argon2id$second"} {
		if err := s.SetPasswordHash(ctx, "Alice", h); err != nil {
			t.Fatal(err)
		}
		got, err := s.PasswordHash(ctx, "ALICE")
		if err != nil || got != h {
			t.Fatalf("PasswordHash = %q, %v; want %q", got, err, h)
		}
	}
	mustErr(t, s.SetPasswordHash(ctx, "alice", ""), store.ErrInvalid, "empty hash")
}

func testTOTP(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	const seed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
	_, _, _, err := s.TOTP(ctx, "alice")
	mustErr(t, err, store.ErrNotFound, "no authenticator app")
	if err := s.SetTOTP(ctx, "alice", seed); err != nil {
		t.Fatal(err)
	}
	// The seed is not in the database in clear.
	if f.driver == store.DriverSQLite {
		if raw := readFile(t, f.dsn); bytes.Contains(raw, []byte(seed)) {
			t.Fatal("the TOTP seed is stored in clear")
		}
	}
	got, _, last, err := s.TOTP(ctx, "ALICE")
	if err != nil || got != seed || last != 0 {
		t.Fatalf("TOTP = %q, %d, %v", got, last, err)
	}
	for _, tc := range []struct {
		step int64
		ok   bool
	}{{100, true}, {100, false}, {99, false}, {101, true}} {
		ok, err := s.UseTOTPStep(ctx, "alice", tc.step)
		if err != nil || ok != tc.ok {
			t.Fatalf("UseTOTPStep(%d) = %v, %v; want %v", tc.step, ok, err, tc.ok)
		}
	}
	// Another server key does not open the seed.
	other := f.open(t, func(o *store.Options) { o.KeyFile = t.TempDir() + "/other.key" })
	if _, err := other.Migrate(ctx); !errors.Is(err, store.ErrKeyMismatch) {
		t.Fatalf("Migrate with another key = %v, want ErrKeyMismatch", err)
	}
	if err := s.SetRecoveryCodes(ctx, "alice", []string{"aaaaa-bbbbb"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTOTP(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.RecoveryCodesLeft(ctx, "alice"); err != nil || n != 0 {
		t.Fatalf("recovery codes left after DeleteTOTP = %d, %v", n, err)
	}
	mustErr(t, s.DeleteTOTP(ctx, "alice"), store.ErrNotFound, "no authenticator app")
}

func testTOTPStepConcurrent(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	if err := s.SetTOTP(ctx, "alice", "JBSWY3DPEHPK3PXP"); err != nil {
		t.Fatal(err)
	}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			ok, err := s.UseTOTPStep(ctx, "alice", 7)
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d of 10 concurrent uses of one step were accepted, want 1", wins.Load())
	}
}

func testRecoveryCodes(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	if err := s.SetRecoveryCodes(ctx, "alice", []string{"abcde-fghij", "klmno-pqrst"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, code string
		ok         bool
	}{
		{"bob", "abcde-fghij", false},
		{"alice", "ABCDE FGHIJ", true},
		{"alice", "abcde-fghij", false},
		{"alice", "zzzzz-zzzzz", false},
	} {
		ok, err := s.UseRecoveryCode(ctx, tc.user, tc.code)
		if err != nil || ok != tc.ok {
			t.Fatalf("UseRecoveryCode(%s, %s) = %v, %v; want %v", tc.user, tc.code, ok, err, tc.ok)
		}
	}
	if n, err := s.RecoveryCodesLeft(ctx, "alice"); err != nil || n != 1 {
		t.Fatalf("RecoveryCodesLeft = %d, %v; want 1", n, err)
	}
}

func testWebAuthn(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	c, err := s.AddWebAuthn(ctx, store.WebAuthnCredential{User: "alice", Name: "YubiKey", CredentialID: []byte{1, 2, 3}, Data: []byte(`{}`)})
	if err != nil || c.ID == 0 || c.Name != "YubiKey" {
		t.Fatalf("AddWebAuthn = %+v, %v", c, err)
	}
	_, err = s.AddWebAuthn(ctx, store.WebAuthnCredential{User: "bob", Name: "x", CredentialID: []byte{1, 2, 3}, Data: []byte(`{}`)})
	mustErr(t, err, store.ErrExists, "registered already")
	_, err = s.AddWebAuthn(ctx, store.WebAuthnCredential{User: "bob", Name: "bad\x07", CredentialID: []byte{9}, Data: []byte(`{}`)})
	mustErr(t, err, store.ErrInvalid, "control character")
	at := time.Now()
	if err := s.UpdateWebAuthn(ctx, "alice", []byte{1, 2, 3}, []byte(`{"n":1}`), at); err != nil {
		t.Fatal(err)
	}
	mustErr(t, s.UpdateWebAuthn(ctx, "bob", []byte{1, 2, 3}, []byte(`{}`), at), store.ErrNotFound, "no such passkey")
	list, err := s.ListWebAuthn(ctx, "ALICE")
	if err != nil || len(list) != 1 || string(list[0].Data) != `{"n":1}` || list[0].LastUsedAt == nil {
		t.Fatalf("ListWebAuthn = %+v, %v", list, err)
	}
	_, err = s.DeleteWebAuthn(ctx, "bob", c.ID)
	mustErr(t, err, store.ErrNotFound, "no passkey")
	if d, err := s.DeleteWebAuthn(ctx, "alice", c.ID); err != nil || d.Name != "YubiKey" {
		t.Fatalf("DeleteWebAuthn = %+v, %v", d, err)
	}
}

func testWebSessions(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	h1, h2 := sha256.Sum256([]byte("one")), sha256.Sum256([]byte("two"))
	ws := store.WebSession{IDHash: h1[:], User: "Alice", Stage: "full", CreatedAt: t0, SeenAt: t0, AuthAt: t0,
		Addr: "192.0.2.1:1234", Agent: "Firefox", Data: []byte("pending secret")}
	if err := s.CreateWebSession(ctx, ws); err != nil {
		t.Fatal(err)
	}
	if f.driver == store.DriverSQLite {
		if raw := readFile(t, f.dsn); bytes.Contains(raw, []byte("pending secret")) {
			t.Fatal("session data is stored in clear")
		}
	}
	got, err := s.GetWebSession(ctx, h1[:])
	if err != nil || got.User != "Alice" || string(got.Data) != "pending secret" || !got.SeenAt.Equal(t0) || got.Addr != ws.Addr {
		t.Fatalf("GetWebSession = %+v, %v", got, err)
	}
	got.Stage, got.SeenAt, got.Data = "mfa", t0.Add(time.Minute), nil
	if err := s.UpdateWebSession(ctx, got); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetWebSession(ctx, h1[:])
	if err != nil || got.Stage != "mfa" || got.Data != nil || !got.SeenAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after update: %+v, %v", got, err)
	}
	_, err = s.GetWebSession(ctx, h2[:])
	mustErr(t, err, store.ErrNotFound, "no such session")
	ws.IDHash, ws.CreatedAt = h2[:], t0.Add(-9*time.Hour)
	if err := s.CreateWebSession(ctx, ws); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListWebSessions(ctx, "alice")
	if err != nil || len(list) != 2 {
		t.Fatalf("ListWebSessions = %d, %v", len(list), err)
	}
	if n, err := s.DeleteStaleWebSessions(ctx, t0.Add(-15*time.Minute), t0.Add(-8*time.Hour)); err != nil || n != 1 {
		t.Fatalf("DeleteStaleWebSessions = %d, %v; want 1", n, err)
	}
	if err := s.DeleteWebSession(ctx, h1[:]); err != nil {
		t.Fatal(err)
	}
	if n, err := s.DeleteWebSessions(ctx, "alice"); err != nil || n != 0 {
		t.Fatalf("DeleteWebSessions = %d, %v", n, err)
	}
	mustErr(t, s.CreateWebSession(ctx, store.WebSession{IDHash: []byte{1}, User: "alice"}), store.ErrInvalid, "id hash")
}

func testDeleteUserPortal(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	h := sha256.Sum256([]byte("x"))
	now := time.Now()
	for _, err := range []error{
		s.SetPasswordHash(ctx, "alice", "h"),
		s.SetTOTP(ctx, "alice", "SEED"),
		s.SetRecoveryCodes(ctx, "alice", []string{"a"}),
		s.CreateWebSession(ctx, store.WebSession{IDHash: h[:], User: "alice", Stage: "full", CreatedAt: now, SeenAt: now, AuthAt: now}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.AddWebAuthn(ctx, store.WebAuthnCredential{User: "alice", Name: "k", CredentialID: []byte{1}, Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PasswordHash(ctx, "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("password hash kept: %v", err)
	}
	if _, _, _, err := s.TOTP(ctx, "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TOTP kept: %v", err)
	}
	if _, err := s.GetWebSession(ctx, h[:]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session kept: %v", err)
	}
	if l, _ := s.ListWebAuthn(ctx, "alice"); len(l) != 0 {
		t.Errorf("passkeys kept: %d", len(l))
	}
	if n, _ := s.RecoveryCodesLeft(ctx, "alice"); n != 0 {
		t.Errorf("recovery codes kept: %d", n)
	}
}

// readFile returns the SQLite database file and its write-ahead log.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	var all []byte
	for _, p := range []string{path, path + "-wal"} {
		b, err := readOptional(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
