package verify

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters of new hashes: OWASP's first recommendation (19 MiB,
// two passes, one lane), about 30 ms on one core; the parameters are kept
// in each hash, so raising them later leaves old hashes readable.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// MaxPasswordBytes bounds the primary password hashed or checked, so that
// a client cannot make the server hash megabytes.
const MaxPasswordBytes = 1024

// HashPassword returns an argon2id hash of password in the PHC string
// format ($argon2id$v=19$m=…,t=…,p=…$salt$hash).
func HashPassword(password string) (string, error) {
	if password == "" {
		return "", errors.New("verify: the password is empty")
	}
	if len(password) > MaxPasswordBytes {
		return "", fmt.Errorf("verify: the password is %d bytes long: at most %d", len(password), MaxPasswordBytes)
	}
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("verify: random salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// checkHash reports whether password matches the PHC string hash.
func checkHash(hash, password string) (bool, error) {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return false, errors.New("verify: stored hash is not an argon2id PHC string")
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false, fmt.Errorf("verify: stored hash has argon2 version %q, want %d", parts[2], argon2.Version)
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || t == 0 || p == 0 || m > 4*1024*1024 || t > 100 {
		return false, fmt.Errorf("verify: stored hash has bad parameters %q", parts[3])
	}
	b64 := base64.RawStdEncoding
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return false, fmt.Errorf("verify: stored hash has a bad salt: %w", err)
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) == 0 || len(want) > 128 {
		return false, errors.New("verify: stored hash has a bad key")
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// HashSource finds a user's stored hash. PasswordHash returns found false
// for a user without one.
type HashSource interface {
	PasswordHash(ctx context.Context, user string) (hash string, found bool, err error)
}

// Hashes verifies passwords against the argon2id hashes of a HashSource
// (web.verify: store).
type Hashes struct {
	Source HashSource
	// dummy is hashed for users without a hash, so that an unknown user
	// takes as long as a wrong password.
	dummy string
}

// NewHashes returns a Hashes verifier over src.
func NewHashes(src HashSource) (*Hashes, error) {
	d, err := HashPassword("passgate: no such user")
	if err != nil {
		return nil, err
	}
	return &Hashes{Source: src, dummy: d}, nil
}

// Verify implements Verifier.
func (h *Hashes) Verify(ctx context.Context, user, password string, _ netip.AddrPort) error {
	if len(password) > MaxPasswordBytes || password == "" {
		return ErrRefused
	}
	hash, found, err := h.Source.PasswordHash(ctx, user)
	if err != nil {
		return fmt.Errorf("verify: read the password hash of %s: %w", user, err)
	}
	if !found {
		_, _ = checkHash(h.dummy, password)
		return ErrRefused
	}
	ok, err := checkHash(hash, password)
	if err != nil {
		return fmt.Errorf("verify: %s: %w (set the password again with \"passgate user set-password %s\")", user, err, user)
	}
	if !ok {
		return ErrRefused
	}
	return nil
}
