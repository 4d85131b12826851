package verify

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

type fakeHashes map[string]string

func (f fakeHashes) PasswordHash(_ context.Context, user string) (string, bool, error) {
	if user == "broken" {
		return "", false, errors.New("store down")
	}
	h, ok := f[user]
	return h, ok, nil
}

func TestHashes(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q is not a PHC argon2id string with the chosen parameters", h)
	}
	if h2, _ := HashPassword("correct horse"); h2 == h {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	v, err := NewHashes(fakeHashes{"alice": h, "mallory": "$argon2id$v=19$m=0,t=0,p=0$$"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user, pw string
		refused        bool // want ErrRefused
		fault          bool // want another error
	}{
		{"ok/right-password", "alice", "correct horse", false, false},
		{"fail/wrong-password", "alice", "correct horse!", true, false},
		{"fail/unknown-user", "bob", "correct horse", true, false},
		{"fail/empty", "alice", "", true, false},
		{"fail/too-long", "alice", strings.Repeat("x", MaxPasswordBytes+1), true, false},
		{"fault/store-down", "broken", "x", false, true},
		{"fault/bad-hash", "mallory", "x", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Verify(context.Background(), tc.user, tc.pw, netip.AddrPort{})
			switch {
			case tc.refused && !errors.Is(err, ErrRefused):
				t.Fatalf("Verify = %v, want ErrRefused", err)
			case tc.fault && (err == nil || errors.Is(err, ErrRefused)):
				t.Fatalf("Verify = %v, want a fault", err)
			case !tc.refused && !tc.fault && err != nil:
				t.Fatalf("Verify = %v, want nil", err)
			}
		})
	}
}

func FuzzCheckHash(f *testing.F) {
	h, _ := HashPassword("pw")
	f.Add(h, "pw")
	f.Add("$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA", "x")
	f.Add("$argon2id$v=19$m=99999999,t=1,p=1$AAAA$AAAA", "x")
	f.Fuzz(func(t *testing.T, hash, pw string) {
		if strings.Contains(hash, "m=") && len(hash) > 200 {
			return
		}
		_, _ = checkHash(hash, pw) // must not panic or allocate without bound
	})
}
