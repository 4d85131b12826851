package portal

import "testing"

func TestSafeNext(t *testing.T) {
	for _, tc := range []struct{ next, want string }{
		{"/add/app-password", "/add/app-password"},
		{"/add", "/add"},
		{"/delete/app-password/12", "/delete/app-password/12"},
		{"/delete/authenticator-app/1", "/delete/authenticator-app/1"},
		{"/delete/passkey/3", "/delete/passkey/3"},
		// As ServeMux hands them over: escaped slashes are not cleaned.
		{`/delete/app-password/../../\evil.example`, "/security-info"},
		{"/delete/app-password/..%2F..%2F%5Cevil.example", "/security-info"},
		{"/delete/app-password/12/../../../x", "/security-info"},
		{"/delete/app-password/", "/security-info"},
		{"/delete/other/12", "/security-info"},
		{"/delete/passkey/12345678901234567890", "/security-info"},
		{"//evil.example", "/security-info"},
		{"https://evil.example/delete/passkey/1", "/security-info"},
		{"", "/security-info"},
		// Admin center pages (Reverify), escaped as sent.
		{"/admin/users/bob", "/admin/users/bob"},
		{"/admin/users/a%2F..%2Fb/revoke-all", "/admin/users/a%2F..%2Fb/revoke-all"},
		{"/admin/settings", "/admin/settings"},
		{"/admin/../evil", "/security-info"},
		{"/admin/users//evil.example", "/security-info"},
		{`/admin/users/\evil.example`, "/security-info"},
		{"/admin/users/bob?x=1", "/security-info"},
		{"/admin/users/bob/", "/security-info"},
	} {
		if got := safeNext(tc.next); got != tc.want {
			t.Errorf("safeNext(%q) = %q, want %q", tc.next, got, tc.want)
		}
	}
}
