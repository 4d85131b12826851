package ldapfront

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
)

// placeholder is the user's place in a user_dn_templates entry.
const placeholder = "{user}"

// Forms of a bind name.
const (
	formDN     = "dn"     // uid=alice,ou=people,dc=example,dc=test
	formUPN    = "upn"    // alice@example.test
	formDomain = "domain" // EXAMPLE\alice
	formPlain  = "plain"  // alice
)

// boundName is what a bind name maps to.
type boundName struct {
	// User is the name given to the decision: the {user} part of a DN that
	// matches a template; for a UPN the local part when its domain is in
	// ldap.upn_domains, the whole UPN when that list is empty (or with
	// UPNAsUser); for DOMAIN\user the whole name (accepted only when
	// ldap.upn_domains is empty); for a DN that matches no template, the
	// whole DN in lower case with spaces written \20 (an application's own
	// account, which has no row in the store).
	User string
	// DN is the entry the name stands for upstream: the template the name
	// matched (or the first one) filled in with User, or the DN as sent
	// when it matches no template. Empty when no template exists and the
	// name is not a DN.
	DN string
	// Templated is true when User came out of a template match or was put
	// into a template: the user is a person of the directory.
	Templated bool
	// Template is the index of the template that produced DN; -1 when
	// none did.
	Template int
	Form     string
}

// dnTemplate is one parsed user_dn_templates entry.
type dnTemplate struct {
	raw      string
	dn       *ldap.DN
	rdn, atv int    // where {user} stands
	pre, suf string // the template as type=value,… around {user}; "" when a value needs escaping
}

// nameMapper turns bind names into user names for the decision.
type nameMapper struct {
	templates  []dnTemplate
	upnDomains []string
	upnAsUser  bool
}

// newNameMapper parses the templates. {user} must be the whole value of one
// attribute, e.g. "uid={user},ou=people,dc=example,dc=test".
func newNameMapper(templates, upnDomains []string, upnAsUser bool) (*nameMapper, error) {
	m := &nameMapper{upnAsUser: upnAsUser}
	for i, raw := range templates {
		dn, err := ldap.ParseDN(raw)
		if err != nil {
			return nil, fmt.Errorf("ldapfront: user DN template %d (%q): %w; write it as a DN such as \"uid={user},ou=people,dc=example,dc=test\"", i, raw, err)
		}
		t := dnTemplate{raw: raw, dn: dn, rdn: -1}
		for ri, rdn := range dn.RDNs {
			for ai, atv := range rdn.Attributes {
				switch {
				case atv.Value == placeholder && t.rdn < 0:
					t.rdn, t.atv = ri, ai
				case strings.Contains(atv.Value, placeholder) || atv.Value == placeholder:
					return nil, fmt.Errorf("ldapfront: user DN template %d (%q): {user} must be the whole value of exactly one attribute", i, raw)
				}
			}
		}
		if t.rdn < 0 {
			return nil, fmt.Errorf("ldapfront: user DN template %d (%q): no {user}; write e.g. \"uid={user},ou=people,dc=example,dc=test\"", i, raw)
		}
		if canon := dn.String(); plainTemplated(boundName{Templated: true, User: strings.NewReplacer(placeholder, "", "=", "", ",", "").Replace(canon)}) {
			t.pre, t.suf, _ = strings.Cut(canon, placeholder)
		}
		m.templates = append(m.templates, t)
	}
	for _, d := range upnDomains {
		m.upnDomains = append(m.upnDomains, strings.ToLower(strings.TrimSpace(d)))
	}
	return m, nil
}

// fill returns the first template with user put in, escaped for a DN.
func (m *nameMapper) fill(user string) string {
	if len(m.templates) == 0 {
		return ""
	}
	return strings.Replace(m.templates[0].raw, placeholder, ldap.EscapeDN(user), 1)
}

// mapName maps a non-empty bind name. ok is false when the name cannot
// stand for anyone (a DN that does not parse, a UPN of a domain that is not
// accepted, an empty user part): the bind fails like a wrong password.
func (m *nameMapper) mapName(name string) (boundName, bool) {
	bn, ok := m.mapNameRaw(name)
	if !ok || !validUser(bn.User) {
		return boundName{}, false
	}
	return bn, true
}

// validUser reports whether a user name can be a login name: not empty,
// valid UTF-8, without spaces or control characters (the store refuses
// such names, and the decision would fail instead of deny).
func validUser(u string) bool {
	if u == "" || !utf8.ValidString(u) {
		return false
	}
	for _, r := range u {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func (m *nameMapper) mapNameRaw(name string) (boundName, bool) {
	name = strings.TrimSpace(name)
	if name == "" {
		return boundName{}, false
	}
	if strings.Contains(name, "=") {
		return m.mapDN(name)
	}
	if i := strings.LastIndexByte(name, '@'); i >= 0 && !strings.Contains(name, `\`) {
		local, domain := name[:i], strings.ToLower(name[i+1:])
		if local == "" || domain == "" {
			return boundName{}, false
		}
		if len(m.upnDomains) == 0 {
			// No list of domains: alice@other.test is not alice. The
			// whole UPN is the user, which only a person whose entry is
			// named by it can be.
			return m.person(name, formUPN), true
		}
		if !m.domainOK(domain) {
			return boundName{}, false
		}
		user := local
		if m.upnAsUser {
			user = name
		}
		return m.person(user, formUPN), true
	}
	if i := strings.IndexByte(name, '\\'); i >= 0 {
		// The NetBIOS domain cannot be checked against ldap.upn_domains:
		// with a list, DOMAIN\user is refused; without one, the whole name
		// is the user (OTHER\alice is not alice).
		user := name[i+1:]
		if len(m.upnDomains) > 0 || i == 0 || user == "" || strings.ContainsAny(user, `\@`) {
			return boundName{}, false
		}
		return m.person(name, formDomain), true
	}
	return m.person(name, formPlain), true
}

func (m *nameMapper) person(user, form string) boundName {
	if len(m.templates) == 0 {
		return boundName{User: user, Template: -1, Form: form}
	}
	return boundName{User: user, DN: m.fill(user), Templated: true, Template: 0, Form: form}
}

func (m *nameMapper) domainOK(domain string) bool {
	for _, d := range m.upnDomains {
		if d == domain {
			return true
		}
	}
	return false
}

// mapDN matches a DN against the templates. Attribute types and values are
// compared case-insensitively after RFC 4514 parsing (so escapes and spaces
// around separators do not matter).
func (m *nameMapper) mapDN(name string) (boundName, bool) {
	// Fast path: the name is a template's own spelling with a plain user,
	// which parsing would map the same way (an earlier template that
	// parsing would match first has the same spelling).
	for i, t := range m.templates {
		if t.pre == "" {
			break
		}
		if len(name) <= len(t.pre)+len(t.suf) || !strings.EqualFold(name[:len(t.pre)], t.pre) || !strings.EqualFold(name[len(name)-len(t.suf):], t.suf) {
			continue
		}
		if user := name[len(t.pre) : len(name)-len(t.suf)]; plainTemplated(boundName{Templated: true, User: user}) {
			return boundName{User: user, DN: m.fillTemplate(t, user), Templated: true, Template: i, Form: formDN}, true
		}
	}
	dn, err := ldap.ParseDN(name)
	if err != nil || len(dn.RDNs) == 0 {
		return boundName{}, false
	}
	for i, t := range m.templates {
		if user, ok := t.match(dn); ok {
			return boundName{User: user, DN: m.fillTemplate(t, user), Templated: true, Template: i, Form: formDN}, true
		}
	}
	// The store refuses names with spaces; a space in a DN value may be
	// written \20 (RFC 4514), so the name stays a DN of the same entry.
	user := strings.ReplaceAll(strings.ToLower(dn.String()), " ", `\20`)
	return boundName{User: user, DN: name, Template: -1, Form: formDN}, true
}

// resolved maps the DN of an entry, as the directory returned it, to the
// name decided on: the templates' {user} part for a person, the DN itself
// for an application's account. The entry's DN is what is bound as. ok is
// false when the DN cannot stand for anyone.
func (m *nameMapper) resolved(entryDN string) (boundName, bool) {
	bn, ok := m.mapDN(entryDN)
	if !ok || !validUser(bn.User) {
		return boundName{}, false
	}
	bn.DN = entryDN
	return bn, true
}

// plainTemplated reports whether a bind name can be used without asking
// the directory which entry it names: it went through a template and its
// user part is plain ASCII (letters, digits, '.', '_', '-'), which a
// directory normalises only by case, as the store does. Anything else (a
// DN that matched no template, an OID or alias attribute type, non-ASCII
// letters, spaces, escapes, '@') is resolved first (conn.resolve).
func plainTemplated(bn boundName) bool {
	if !bn.Templated || bn.User == "" {
		return false
	}
	for i := 0; i < len(bn.User); i++ {
		switch ch := bn.User[i]; {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '.', ch == '_', ch == '-':
		default:
			return false
		}
	}
	return true
}

func (m *nameMapper) fillTemplate(t dnTemplate, user string) string {
	return strings.Replace(t.raw, placeholder, ldap.EscapeDN(user), 1)
}

// match reports whether dn has the template's shape and returns the value
// that stands where {user} does.
func (t dnTemplate) match(dn *ldap.DN) (string, bool) {
	if len(dn.RDNs) != len(t.dn.RDNs) {
		return "", false
	}
	user := ""
	for ri, trdn := range t.dn.RDNs {
		rdn := dn.RDNs[ri]
		if len(rdn.Attributes) != len(trdn.Attributes) {
			return "", false
		}
		for ai, tatv := range trdn.Attributes {
			atv := rdn.Attributes[ai]
			if !strings.EqualFold(strings.TrimSpace(atv.Type), strings.TrimSpace(tatv.Type)) {
				return "", false
			}
			if ri == t.rdn && ai == t.atv {
				user = atv.Value
				continue
			}
			if !strings.EqualFold(atv.Value, tatv.Value) {
				return "", false
			}
		}
	}
	if strings.TrimSpace(user) == "" {
		return "", false
	}
	return user, true
}
