package cli

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/backends/verify"
)

func TestUserSetPassword(t *testing.T) {
	cfg := adminConfig(t)
	a := newAdminEnv(nil)
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		out   string
	}{
		{"ok/first-line", "s3cret pass\nignored\n", []string{"user", "set-password", "alice", "--config", cfg}, exitOK, "Set the portal password of alice."},
		{"usage/empty-stdin", "", []string{"user", "set-password", "alice", "--config", cfg}, exitUsage, ""},
		{"usage/no-name", "x\n", []string{"user", "set-password", "--config", cfg}, exitUsage, ""},
		{"usage/too-long", strings.Repeat("x", 2000), []string{"user", "set-password", "alice", "--config", cfg}, exitUsage, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.Stdin = strings.NewReader(tc.stdin)
			if code := a.run(t, tc.args...); code != tc.code || !strings.Contains(a.out.String(), tc.out) {
				t.Fatalf("exit %d, want %d; stdout %q; stderr %q", code, tc.code, a.out.String(), a.err.String())
			}
		})
	}
	if strings.Contains(a.out.String()+a.err.String(), "s3cret") {
		t.Fatal("the password was printed")
	}
	c, _, err := a.loadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStore(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h, err := verify.NewHashes(hashSource{st})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Verify(context.Background(), "ALICE", "s3cret pass", netip.AddrPort{}); err != nil {
		t.Fatalf("the stored hash does not verify: %v", err)
	}
	if err := h.Verify(context.Background(), "alice", "ignored", netip.AddrPort{}); !errors.Is(err, verify.ErrRefused) {
		t.Fatalf("another password: %v", err)
	}
	ev, _ := st.Audit(context.Background(), store.AuditFilter{User: "alice"})
	if len(ev) == 0 || ev[len(ev)-1].Action != "user.set-password" && ev[0].Action != "user.set-password" {
		t.Fatalf("no user.set-password audit event: %+v", ev)
	}
}
