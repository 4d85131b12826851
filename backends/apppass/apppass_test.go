package apppass

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestGenerateShapeAndUniformity(t *testing.T) {
	const n = 20000
	var counts [26]int
	seen := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		s, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != Length {
			t.Fatalf("length %d", len(s))
		}
		for j := 0; j < len(s); j++ {
			c := s[j]
			if c < 'a' || c > 'z' {
				t.Fatalf("%q has a non-letter", s)
			}
			counts[c-'a']++
		}
		if seen[s] {
			t.Fatalf("duplicate %q", s)
		}
		seen[s] = true
	}
	// Chi-squared against the uniform distribution, 25 degrees of freedom:
	// 52.6 is the 0.999 quantile. A modulo bias (256 % 26 = 22 favoured
	// letters) gives a chi-squared in the hundreds at this sample size.
	total := float64(n * Length)
	exp := total / 26
	var chi float64
	for _, c := range counts {
		chi += math.Pow(float64(c)-exp, 2) / exp
	}
	if chi > 52.6 {
		t.Errorf("letters not uniform: chi-squared %.1f > 52.6 (%v)", chi, counts)
	}
}

func TestFormatNormalize(t *testing.T) {
	tests := []struct {
		name, in, norm string
		ok             bool
	}{
		{"ok/plain", "abcdefghijklmnop", "abcdefghijklmnop", true},
		{"ok/grouped", "abcd efgh ijkl mnop", "abcdefghijklmnop", true},
		{"ok/upper-and-spaces", " ABCD  efGH ijkl MNOP ", "abcdefghijklmnop", true},
		{"fail/short", "abcd efgh", "abcdefgh", false},
		{"fail/digit", "abcd efgh ijkl mno1", "abcdefghijklmno1", false},
		{"fail/long", "abcdefghijklmnopq", "abcdefghijklmnopq", false},
		{"fail/non-ascii", "abcdefghijklmnoé", "abcdefghijklmno\xc3\xa9", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			norm, ok := Normalize(tc.in)
			if norm != tc.norm || ok != tc.ok {
				t.Errorf("Normalize(%q) = %q, %v; want %q, %v", tc.in, norm, ok, tc.norm, tc.ok)
			}
		})
	}
	if got := Format("abcdefghijklmnop"); got != "abcd efgh ijkl mnop" {
		t.Errorf("Format = %q", got)
	}
	if got := Format("short"); got != "short" {
		t.Errorf("Format(short) = %q", got)
	}
}

func TestHasher(t *testing.T) {
	if _, err := NewHasher(make([]byte, 16)); err != ErrKeySize {
		t.Fatalf("short key: %v", err)
	}
	k1 := bytes.Repeat([]byte{1}, KeySize)
	k2 := bytes.Repeat([]byte{2}, KeySize)
	h1, _ := NewHasher(k1)
	h2, _ := NewHasher(k2)
	a := h1.Hash("alice", "abcdefghijklmnop")
	if !Equal(a, h1.Hash("ALICE", "ABCD EFGH IJKL MNOP")) {
		t.Error("hash not insensitive to case and spaces")
	}
	if Equal(a, h1.Hash("bob", "abcdefghijklmnop")) {
		t.Error("two users share a hash")
	}
	if Equal(a, h2.Hash("alice", "abcdefghijklmnop")) {
		t.Error("two keys give one hash")
	}
	if h1.Fingerprint() == h2.Fingerprint() || len(h1.Fingerprint()) != 24 {
		t.Error("fingerprints")
	}
	if strings.Contains(h1.Fingerprint(), "0101") && bytes.Contains([]byte(h1.Fingerprint()), k1) {
		t.Error("fingerprint shows the key")
	}
	k1[0] = 9 // the hasher keeps its own copy
	if !Equal(a, h1.Hash("alice", "abcdefghijklmnop")) {
		t.Error("hasher shares the caller's key slice")
	}
}

func BenchmarkHashAndCompare(b *testing.B) {
	h, _ := NewHasher(bytes.Repeat([]byte{7}, KeySize))
	want := h.Hash("alice", "abcdefghijklmnop")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if !Equal(want, h.Hash("alice", "abcd efgh ijkl mnop")) {
			b.Fatal("mismatch")
		}
	}
}
