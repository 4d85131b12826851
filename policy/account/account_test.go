package account

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/passgate/passgate/backends/store"
)

type maxOnly struct{ Store }

func (maxOnly) MaxAppPasswords() int { return 40 }

func TestMessage(t *testing.T) {
	s := New(Options{Store: maxOnly{}})
	for _, tc := range []struct {
		name string
		err  error
		want string
		ok   bool
	}{
		{"limit", fmt.Errorf("x: %w", store.ErrLimitReached), "limit reached (40)", true},
		{"switched-off", store.ErrAppPasswordsDisabled, "switched off", true},
		{"mfa-disabled", store.ErrMFADisabled, "multi-factor authentication (MFA)", true},
		{"taken", store.ErrLabelTaken, "already in use", true},
		{"invalid", fmt.Errorf("store: label is empty: %w", store.ErrInvalid), "Name is empty", true},
		{"bad-code", ErrBadCode, "not right", true},
		{"fault", errors.New("disk full"), "Something went wrong", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := s.Message(tc.err)
			if ok != tc.ok || !strings.Contains(got, tc.want) || strings.Contains(got, "passgate ") {
				t.Fatalf("Message = %q, %v; want %q, %v and no command", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestMatchStep(t *testing.T) {
	const seed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
	now := time.Unix(1_800_000_015, 0)
	code := func(d time.Duration) string { c, _ := totp.GenerateCode(seed, now.Add(d)); return c }
	for _, tc := range []struct {
		name string
		code string
		want int64
	}{
		{"ok/now", code(0), now.Unix() / 30},
		{"ok/previous-step", code(-30 * time.Second), now.Unix()/30 - 1},
		{"ok/next-step-with-space", code(30 * time.Second)[:3] + " " + code(30 * time.Second)[3:], now.Unix()/30 + 1},
		{"fail/two-steps-ago", code(-60 * time.Second), -1},
		{"fail/short", "12345", -1},
		{"fail/letters", "abcdef", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := matchStep(seed, tc.code, now); got != tc.want && !(tc.want == -1 && got == -1) {
				t.Fatalf("matchStep(%q) = %d, want %d", tc.code, got, tc.want)
			}
		})
	}
}

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"Outlook 2010", true}, {"Тelefon", true}, {"evil\u202etxt.exe", false}, {"a\u2066b", false}} {
		if err := checkName(tc.name); (err == nil) != tc.ok {
			t.Errorf("checkName(%q) = %v", tc.name, err)
		}
	}
}

func TestRecoveryCodes(t *testing.T) {
	codes, err := newRecoveryCodes()
	if err != nil || len(codes) != 10 {
		t.Fatalf("%d codes, %v", len(codes), err)
	}
	seen := map[string]bool{}
	for _, c := range codes {
		if len(c) != 11 || c[5] != '-' || seen[c] {
			t.Fatalf("bad or repeated code %q", c)
		}
		seen[c] = true
	}
}
