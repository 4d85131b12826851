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
				{Time: base, Actor: "imap:192.0.2.1:1000", Action: "login", Subject: "User02", Outcome: "success", Detail: "credential=password tls=yes reason=primary password accepted; would be refused once enforced client=Thunderbird"},
				{Time: base.Add(time.Minute), Actor: "smtp:192.0.2.2:1000", Action: "login", Subject: "User02", Outcome: "success", Detail: "credential=password tls=yes reason=primary password accepted; would be refused once enforced"},
				{Time: base.Add(2 * time.Minute), Actor: "imap:192.0.2.3:1000", Action: "login", Subject: "user02", Outcome: "success", Detail: "credential=password tls=yes reason=primary password accepted; would be refused once enforced client=Thunderbird"},
				{Time: base.Add(3 * time.Minute), Actor: "imap:192.0.2.3:1000", Action: "login", Subject: "user04", Outcome: "failure", Detail: "credential=password"},
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
			if len(ro) != 2 || ro[0].Protocol != "imap" || ro[0].Client != "Thunderbird" || ro[0].Count != 2 || ro[0].Addr != "192.0.2.3:1000" {
				t.Errorf("rollout = %+v", ro)
			}
			all, err := st.AuditPage(ctx, store.AuditQuery{Protocol: "imap", Limit: 2})
			if err != nil || len(all) != 2 || all[0].Subject != "user04" {
				t.Fatalf("audit page 1 = %+v, %v", all, err)
			}
			next, err := st.AuditPage(ctx, store.AuditQuery{Protocol: "imap", Before: all[1].ID, Limit: 2})
			if err != nil || len(next) != 1 || next[0].Actor != "imap:192.0.2.1:1000" {
				t.Errorf("audit page 2 = %+v, %v", next, err)
			}
			none, err := st.AuditPage(ctx, store.AuditQuery{Protocol: "imap", Before: next[0].ID})
			if err != nil || len(none) != 0 {
				t.Errorf("paging past the end = %+v, %v", none, err)
			}
			if f, err := st.AuditPage(ctx, store.AuditQuery{User: "USER04", Outcome: "failure"}); err != nil || len(f) != 1 {
				t.Errorf("user+outcome filter = %+v, %v", f, err)
			}
		})
	}
}
