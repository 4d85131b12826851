package ldapfront

import "testing"

func TestMapName(t *testing.T) {
	people := "uid={user},ou=people,dc=example,dc=test"
	staff := "cn={user},ou=staff,dc=example,dc=test"
	m, err := newNameMapper([]string{people, staff}, []string{"example.test"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if m.templates[0].pre != "uid=" || m.templates[1].suf != ",ou=staff,dc=example,dc=test" {
		t.Fatalf("no fast path for plain templates: %+v", m.templates)
	}
	bare, err := newNameMapper(nil, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := newNameMapper([]string{"mail={user},ou=people,dc=example,dc=test"}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		m      *nameMapper
		in     string
		ok     bool
		user   string
		dn     string
		templd bool
	}{
		{"dn/template", m, "uid=alice,ou=people,dc=example,dc=test", true, "alice", "uid=alice,ou=people,dc=example,dc=test", true},
		{"dn/case-only", m, "UID=Alice,OU=People,DC=Example,DC=Test", true, "Alice", "uid=Alice,ou=people,dc=example,dc=test", true},
		{"dn/prefix-and-suffix-overlap", m, "uid=,ou=people,dc=example,dc=test,ou=people,dc=example,dc=test", true, "uid=,ou=people,dc=example,dc=test,ou=people,dc=example,dc=test", "uid=,ou=people,dc=example,dc=test,ou=people,dc=example,dc=test", false},
		{"dn/case-and-spaces", m, "UID=Alice, OU=People, DC=Example, DC=Test", true, "Alice", "uid=Alice,ou=people,dc=example,dc=test", true},
		{"dn/escaped-value", m, `uid=\61lice,ou=people,dc=example,dc=test`, true, "alice", "uid=alice,ou=people,dc=example,dc=test", true},
		{"dn/second-template", m, "cn=bob,ou=staff,dc=example,dc=test", true, "bob", "cn=bob,ou=staff,dc=example,dc=test", true},
		{"dn/special-chars-escaped-upstream", m, `uid=a\,b,ou=people,dc=example,dc=test`, true, "a,b", `uid=a\,b,ou=people,dc=example,dc=test`, true},
		{"dn/no-template-match", m, "cn=Wiki App,ou=services,dc=example,dc=test", true, `cn=wiki\20app,ou=services,dc=example,dc=test`, "cn=Wiki App,ou=services,dc=example,dc=test", false},
		{"dn/deeper-than-template", m, "uid=alice,ou=x,ou=people,dc=example,dc=test", true, "uid=alice,ou=x,ou=people,dc=example,dc=test", "uid=alice,ou=x,ou=people,dc=example,dc=test", false},
		{"dn/multivalued-rdn", m, "uid=alice+cn=x,ou=people,dc=example,dc=test", true, "cn=x+uid=alice,ou=people,dc=example,dc=test", "uid=alice+cn=x,ou=people,dc=example,dc=test", false},
		{"dn/empty-user", m, "uid=,ou=people,dc=example,dc=test", true, "uid=,ou=people,dc=example,dc=test", "uid=,ou=people,dc=example,dc=test", false},
		{"dn/unparsable", m, "uid=alice,,=", false, "", "", false},
		{"upn/ok", m, "alice@example.test", true, "alice", "uid=alice,ou=people,dc=example,dc=test", true},
		{"upn/domain-case", m, "alice@EXAMPLE.TEST", true, "alice", "uid=alice,ou=people,dc=example,dc=test", true},
		{"upn/other-domain", m, "alice@evil.test", false, "", "", false},
		{"upn/empty-local", m, "@example.test", false, "", "", false},
		{"upn/no-list-keeps-domain", bare, "alice@anything.test", true, "alice@anything.test", "", false},
		{"upn/no-list-keeps-domain-templated", whole, "alice@other.test", true, "alice@other.test", "mail=alice@other.test,ou=people,dc=example,dc=test", true},
		{"upn/whole-upn-as-user", whole, "alice@example.test", true, "alice@example.test", "mail=alice@example.test,ou=people,dc=example,dc=test", true},
		{"domain/refused-with-upn-domains", m, `EXAMPLE\alice`, false, "", "", false},
		{"domain/no-list-keeps-domain", bare, `EXAMPLE\alice`, true, `EXAMPLE\alice`, "", false},
		{"domain/empty-domain", bare, `\alice`, false, "", "", false},
		{"domain/empty-user", bare, `EXAMPLE\`, false, "", "", false},
		{"domain/two-backslashes", bare, `A\B\alice`, false, "", "", false},
		{"plain/ok", m, "alice", true, "alice", "uid=alice,ou=people,dc=example,dc=test", true},
		{"plain/dn-special-escaped", m, "a+b", true, "a+b", `uid=a\+b,ou=people,dc=example,dc=test`, true},
		{"plain/no-template", bare, "alice", true, "alice", "", false},
		{"plain/space-inside", m, "a lice", false, "", "", false},
		{"plain/control-char", m, "alice\x00", false, "", "", false},
		{"dn/space-in-user", m, "uid=a lice,ou=people,dc=example,dc=test", false, "", "", false},
		{"upn/space-in-user", m, "a lice@example.test", false, "", "", false},
		{"empty", m, "  ", false, "", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tc.m.mapName(tc.in)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (%+v)", ok, tc.ok, got)
			}
			if !ok {
				return
			}
			if got.User != tc.user || got.DN != tc.dn || got.Templated != tc.templd {
				t.Fatalf("got user %q dn %q templated %v, want %q %q %v", got.User, got.DN, got.Templated, tc.user, tc.dn, tc.templd)
			}
			// The fast path for a template's own spelling maps as parsing does.
			slow := *tc.m
			slow.templates = append([]dnTemplate(nil), tc.m.templates...)
			for i := range slow.templates {
				slow.templates[i].pre, slow.templates[i].suf = "", ""
			}
			if parsed, ok := slow.mapName(tc.in); !ok || parsed != got {
				t.Fatalf("fast path %+v, parsing %+v (%v)", got, parsed, ok)
			}
		})
	}
}

func TestNewNameMapperRejectsBadTemplates(t *testing.T) {
	for _, tpl := range []string{
		"ou=people,dc=example,dc=test",     // no {user}
		"uid=x{user},ou=people,dc=example", // not a whole value
		"uid={user},cn={user},dc=example",  // twice
		"uid={user},,",                     // not a DN
	} {
		if _, err := newNameMapper([]string{tpl}, nil, false); err == nil {
			t.Errorf("template %q accepted", tpl)
		}
	}
}

func TestPlainTemplated(t *testing.T) {
	for _, tc := range []struct {
		bn   boundName
		want bool
	}{
		{boundName{User: "alice", Templated: true}, true},
		{boundName{User: "j.doe-2_x", Templated: true}, true},
		{boundName{User: "ＡＬＩＣＥ", Templated: true}, false},
		{boundName{User: "a lice", Templated: true}, false},
		{boundName{User: "a,b", Templated: true}, false},
		{boundName{User: "alice", Templated: false}, false},
		{boundName{User: "", Templated: true}, false},
	} {
		if got := plainTemplated(tc.bn); got != tc.want {
			t.Errorf("plainTemplated(%+v) = %v, want %v", tc.bn, got, tc.want)
		}
	}
}

// TestResolvedAndTemplateIndex: the directory's DN of an entry maps to the
// template's user (with the template's index) or, for an application's
// account, to the DN itself; it is what is bound as.
func TestResolvedAndTemplateIndex(t *testing.T) {
	m, err := newNameMapper([]string{"uid={user},ou=people,dc=example,dc=test", "cn={user},ou=staff,dc=example,dc=test"}, []string{"example.test"}, false)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, in string
		ok       bool
		user     string
		tmpl     int
	}{
		{"ok/first-template", "uid=alice,ou=people,dc=example,dc=test", true, "alice", 0},
		{"ok/second-template", "cn=bob,ou=staff,dc=example,dc=test", true, "bob", 1},
		{"ok/app-account", "cn=wiki,ou=services,dc=example,dc=test", true, "cn=wiki,ou=services,dc=example,dc=test", -1},
		{"fail/not-a-dn", "uid=alice,,=", false, "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bn, ok := m.resolved(tc.in)
			if ok != tc.ok || (ok && (bn.User != tc.user || bn.Template != tc.tmpl || bn.DN != tc.in)) {
				t.Fatalf("resolved(%q) = %+v %v, want user %q template %d dn %q", tc.in, bn, ok, tc.user, tc.tmpl, tc.in)
			}
		})
	}
	for _, tc := range []struct {
		in   string
		tmpl int
	}{{"alice", 0}, {"alice@example.test", 0}, {"uid=alice,ou=people,dc=example,dc=test", 0}, {"cn=bob,ou=staff,dc=example,dc=test", 1}, {"cn=x,dc=example,dc=test", -1}} {
		if bn, ok := m.mapName(tc.in); !ok || bn.Template != tc.tmpl {
			t.Errorf("mapName(%q).Template = %d (%v), want %d", tc.in, bn.Template, ok, tc.tmpl)
		}
	}
}
