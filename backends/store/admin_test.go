package store_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// TestAdminContract checks the admin center's queries on SQLite and
// PostgreSQL: keyset paging with the app-password aggregate, the admin
// flag, admin tokens, the audit page and the rollout report.
func TestAdminContract(t *testing.T) {
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			f := newFixture(t, driver)
			st := f.migrated(t)
			ctx := ctxT(t)
			for i := range 7 {
				if _, err := st.AddUser(ctx, fmt.Sprintf("User%02d", i), store.MFAEnabled); err != nil {
					t.Fatal(err)
				}
			}
			used := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
			for i := range 3 {
				ap, _, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: "user03", Label: fmt.Sprint("l", i)})
				if err != nil {
					t.Fatal(err)
				}
				if err := st.TouchAppPassword(ctx, ap.ID, store.Usage{At: used.Add(time.Duration(i) * time.Hour), Addr: "192.0.2.1:1", Proto: "imap"}); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			after := ""
			for {
				page, err := st.ListUserPage(ctx, store.UserQuery{After: after, Limit: 3})
				if err != nil {
					t.Fatal(err)
				}
				for _, u := range page {
					got = append(got, u.Name)
					if want := map[bool]int{true: 3, false: 0}[u.Name == "User03"]; u.AppPasswords != want {
						t.Errorf("%s has %d app passwords, want %d", u.Name, u.AppPasswords, want)
					}
					if u.Name == "User03" && (u.LastSignIn == nil || !u.LastSignIn.Equal(used.Add(2*time.Hour))) {
						t.Errorf("User03's last sign-in = %v, want %v", u.LastSignIn, used.Add(2*time.Hour))
					}
				}
				if len(page) < 3 {
					break
				}
				after = page[len(page)-1].Name
			}
			if len(got) != 7 || got[0] != "User00" || got[6] != "User06" {
				t.Errorf("paged users = %v", got)
			}
			page, err := st.ListUserPage(ctx, store.UserQuery{Search: "ER0_", Limit: 10})
			if err != nil || len(page) != 0 {
				t.Errorf("search with a LIKE wildcard matched %v, %v", page, err)
			}
			page, err = st.ListUserPage(ctx, store.UserQuery{Search: "r05"})
			if err != nil || len(page) != 1 || page[0].Name != "User05" {
				t.Errorf("search r05 = %v, %v", page, err)
			}
			if n, err := st.CountUsers(ctx, "user0"); err != nil || n != 7 {
				t.Errorf("CountUsers = %d, %v", n, err)
			}

			if err := st.SetAdmin(ctx, "user01", true); err != nil {
				t.Fatal(err)
			}
			if ok, err := st.IsAdmin(ctx, "USER01"); err != nil || !ok {
				t.Errorf("IsAdmin = %v, %v", ok, err)
			}
			if err := st.SetAdmin(ctx, "nobody", true); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("SetAdmin(nobody) = %v, want ErrNotFound", err)
			}

			exp := time.Now().Add(time.Hour)
			tok, secret, err := st.CreateAdminToken(ctx, "hr-sync", "cli:root", true, &exp)
			if err != nil || !tok.ReadOnly || tok.ExpiresAt == nil {
				t.Fatalf("CreateAdminToken = %+v, %v", tok, err)
			}
			if _, _, err := st.CreateAdminToken(ctx, "HR-sync", "", false, nil); !errors.Is(err, store.ErrExists) {
				t.Errorf("second token HR-sync: %v, want ErrExists", err)
			}
			if got, err := st.FindAdminToken(ctx, secret); err != nil || got.Name != "hr-sync" || got.LastUsedAt == nil {
				t.Errorf("FindAdminToken = %+v, %v", got, err)
			}
			if _, err := st.FindAdminToken(ctx, secret+"x"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("wrong token: %v", err)
			}
			if err := st.RevokeAdminToken(ctx, "hr-sync"); err != nil {
				t.Fatal(err)
			}
			if _, err := st.FindAdminToken(ctx, secret); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("revoked token: %v", err)
			}

			base := time.Now().Add(-time.Hour)
			evs := []store.AuditEvent{
				{Time: base, Action: "login", Subject: "User02", Outcome: "success", Protocol: "imap", ClientAddr: "192.0.2.1", ClientPort: 1000, Credential: store.CredentialPrimary, TLS: true, Reason: "primary password accepted; would be refused once enforced", ClientName: "Thunderbird"},
				{Time: base.Add(time.Minute), Action: "login", Subject: "User02", Outcome: "success", Protocol: "smtp", ClientAddr: "192.0.2.2", ClientPort: 1000, Credential: store.CredentialPrimary, TLS: true, Reason: "primary password accepted; would be refused once enforced"},
				{Time: base.Add(2 * time.Minute), Action: "login", Subject: "user02", Outcome: "success", Protocol: "imap", ClientAddr: "192.0.2.3", ClientPort: 1000, Credential: store.CredentialPrimary, TLS: true, Reason: "primary password accepted; would be refused once enforced", ClientName: "Thunderbird"},
				{Time: base.Add(3 * time.Minute), Action: "login", Subject: "user04", Outcome: "failure", Protocol: "imap", ClientAddr: "192.0.2.3", ClientPort: 1000, Credential: store.CredentialPrimary, Reason: "wrong password"},
				// An app-password login of the same user is not the rollout's.
				{Time: base.Add(4 * time.Minute), Action: "login", Subject: "user02", Outcome: "success", Protocol: "imap", ClientAddr: "192.0.2.4", ClientPort: 1000, Credential: store.CredentialAppPassword, AppPasswordID: 1, Label: "phone", Reason: "app password accepted"},
			}
			for _, ev := range evs {
				if err := st.Record(ctx, ev); err != nil {
					t.Fatal(err)
				}
			}
			ro, err := st.Rollout(ctx, base.Add(-time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			if len(ro) != 2 || ro[0].Protocol != "imap" || ro[0].Client != "Thunderbird" || ro[0].Count != 2 || ro[0].Addr != "192.0.2.3" {
				t.Errorf("rollout = %+v", ro)
			}
			imap := store.AuditFilter{Protocol: "imap", Newest: true}
			all, next, err := st.AuditPage(ctx, imap, store.AuditCursor{}, 2)
			if err != nil || len(all) != 2 || all[0].Subject != "user02" || all[1].Subject != "user04" || next.IsZero() {
				t.Fatalf("audit page 1 = %+v, %v, %v", all, next, err)
			}
			more, next2, err := st.AuditPage(ctx, imap, next, 2)
			if err != nil || len(more) != 2 || more[1].Actor != "imap:192.0.2.1:1000" || !next2.IsZero() {
				t.Errorf("audit page 2 = %+v, %v, %v", more, next2, err)
			}
			if f, _, err := st.AuditPage(ctx, store.AuditFilter{User: "USER04", Outcome: "failure"}, store.AuditCursor{}, 0); err != nil || len(f) != 1 {
				t.Errorf("user+outcome filter = %+v, %v", f, err)
			}
		})
	}
}
