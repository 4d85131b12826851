// Package apppass generates, formats and hashes app passwords.
//
// On the path of a login it sits at the very bottom: the store
// (backends/store) hashes a presented secret with a Hasher to find the one
// app password row that matches it. An app password is 16 lowercase letters
// drawn from crypto/rand without modulo bias (about 75 bits), shown once as
// four groups of four ("abcd efgh ijkl mnop"). On input, spaces and case are
// ignored. Only HMAC-SHA-256 of the normalised secret under the server key is
// ever stored, so a stolen database alone does not allow offline guessing.
//
// This package imports no other passgate package.
package apppass

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
)

// Length is the number of letters in an app password.
const Length = 16

// KeySize is the size in bytes of a server key.
const KeySize = 32

const alphabet = "abcdefghijklmnopqrstuvwxyz"

// Generate returns a new app password of Length lowercase letters, without
// spaces. Each letter is drawn uniformly from crypto/rand by rejection
// sampling, so no letter is more likely than another.
func Generate() (string, error) {
	var out [Length]byte
	var buf [32]byte
	n := 0
	for n < Length {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", fmt.Errorf("apppass: read random bytes: %w", err)
		}
		for _, b := range buf {
			// 234 = 26*9: bytes 234..255 would make the first 22 letters
			// more likely; drop them.
			if b >= 234 {
				continue
			}
			out[n] = alphabet[b%26]
			n++
			if n == Length {
				break
			}
		}
	}
	return string(out[:]), nil
}

// Format returns secret in four groups of four letters separated by spaces,
// the form shown to a user once. A secret that is not Length letters long is
// returned unchanged.
func Format(secret string) string {
	if len(secret) != Length {
		return secret
	}
	return secret[0:4] + " " + secret[4:8] + " " + secret[8:12] + " " + secret[12:16]
}

// Normalize removes spaces and folds ASCII upper case to lower case, the way
// an app password is read on input. ok is false when the result cannot be an
// app password (wrong length or a character other than a letter); callers
// still hash such input so that timing does not tell the two apart.
func Normalize(input string) (norm string, ok bool) {
	var b strings.Builder
	b.Grow(len(input))
	ok = true
	for i := 0; i < len(input); i++ {
		c := input[i]
		switch {
		case c == ' ':
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z':
		default:
			ok = false
		}
		b.WriteByte(c)
	}
	norm = b.String()
	if len(norm) != Length {
		ok = false
	}
	return norm, ok
}

// Hasher computes the keyed hash under which app passwords are stored.
type Hasher struct {
	key []byte
}

// ErrKeySize is returned by NewHasher for a key of the wrong size.
var ErrKeySize = errors.New("apppass: server key must be 32 bytes")

// NewHasher returns a Hasher for a KeySize-byte server key.
func NewHasher(key []byte) (*Hasher, error) {
	if len(key) != KeySize {
		return nil, ErrKeySize
	}
	k := make([]byte, len(key))
	copy(k, key)
	return &Hasher{key: k}, nil
}

// Hash returns HMAC-SHA-256 of the user name (lower-cased) and the
// normalised secret. Binding the user into the hash means that the same
// secret of two users never shares a hash and a row found by hash always
// belongs to the user who logged in.
func (h *Hasher) Hash(user, secret string) []byte {
	norm, _ := Normalize(secret)
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte(strings.ToLower(user)))
	m.Write([]byte{0})
	m.Write([]byte(norm))
	return m.Sum(nil)
}

// Equal compares two hashes in constant time.
func Equal(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}

// Fingerprint returns a short, non-secret identifier of the key, stored with
// the schema so that a different key file is detected at start.
func (h *Hasher) Fingerprint() string {
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte("passgate key fingerprint v1"))
	return fmt.Sprintf("%x", m.Sum(nil)[:12])
}

// DeriveKey returns a 32-byte key for purpose, derived from the server key
// with HKDF-SHA-256, so that one key file serves several uses (the keyed
// hash of app passwords, the sealing of TOTP seeds) without one use's key
// ever being another's.
func (h *Hasher) DeriveKey(purpose string) []byte {
	k, err := hkdf.Key(sha256.New, h.key, nil, "passgate "+purpose, KeySize)
	if err != nil {
		// Only a length beyond 255 hash sizes fails, never KeySize.
		panic("apppass: hkdf: " + err.Error())
	}
	return k
}
