package ldapupstream

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// DefaultGroupTTL is how long Groups keeps a group's members when
// GroupOptions.TTL is 0.
const DefaultGroupTTL = 60 * time.Second

// GroupOptions configures Groups.
type GroupOptions struct {
	// DNs are the groups whose members Groups reports.
	DNs []string
	// UserDNTemplates turn a login name into the DNs a groupOfNames may
	// list it under ("uid={user},ou=people,dc=example,dc=test"); the name
	// is escaped for a DN.
	UserDNTemplates []string
	// TTL is how long a group's members are kept before they are read
	// again; default DefaultGroupTTL.
	TTL time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Groups tells whether a user is a member of one of the configured
// directory groups, reading each group with one base-scope search as the
// service account (on Resolve's kept connection) and keeping its members
// for the TTL. A member is a DN in member or uniqueMember that equals one
// of the user's DNs (UserDNTemplates; attribute types and values compared
// case-insensitively), or the login name itself in memberUid (posixGroup).
// It is safe for concurrent use; one refresh at a time, others wait for it.
type Groups struct {
	c    *Client
	opts GroupOptions

	refresh chan struct{} // one slot: one refresh at a time
	mu      sync.Mutex    // guards cached and until
	cached  []groupMembers
	until   time.Time
}

// groupMembers is one group's members as read.
type groupMembers struct {
	dns  map[string]bool // canonical DNs (member, uniqueMember)
	uids map[string]bool // lowercased memberUid values
}

// Groups returns the group reader of c for opts. It does not contact the
// directory.
func (c *Client) Groups(opts GroupOptions) *Groups {
	if opts.TTL <= 0 {
		opts.TTL = DefaultGroupTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Groups{c: c, opts: opts, refresh: make(chan struct{}, 1)}
}

// IsMember reports whether user is a member of one of the groups. An
// error means the directory could not be read and nothing fresh is
// cached: the caller cannot tell, and must not guess "no".
func (g *Groups) IsMember(ctx context.Context, user string) (bool, error) {
	members, err := g.members(ctx)
	if err != nil {
		return false, err
	}
	uid := strings.ToLower(strings.TrimSpace(user))
	dns := make([]string, 0, len(g.opts.UserDNTemplates))
	for _, tpl := range g.opts.UserDNTemplates {
		if dn, ok := canonicalDN(strings.ReplaceAll(tpl, "{user}", ldap.EscapeDN(strings.TrimSpace(user)))); ok {
			dns = append(dns, dn)
		}
	}
	for _, m := range members {
		if m.uids[uid] {
			return true, nil
		}
		for _, dn := range dns {
			if m.dns[dn] {
				return true, nil
			}
		}
	}
	return false, nil
}

// members returns the cached members, reading every group again once the
// TTL has passed.
func (g *Groups) members(ctx context.Context) ([]groupMembers, error) {
	if m, ok := g.fresh(); ok {
		return m, nil
	}
	select {
	case g.refresh <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("ldapupstream: read the mfa groups: %w", context.Cause(ctx))
	}
	defer func() { <-g.refresh }()
	if m, ok := g.fresh(); ok { // another caller read them meanwhile
		return m, nil
	}
	out := make([]groupMembers, 0, len(g.opts.DNs))
	for _, dn := range g.opts.DNs {
		m, err := g.readGroup(ctx, dn)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	g.mu.Lock()
	g.cached, g.until = out, g.opts.Now().Add(g.opts.TTL)
	g.mu.Unlock()
	return out, nil
}

// fresh returns the cached members while the TTL lasts.
func (g *Groups) fresh() ([]groupMembers, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cached != nil && g.opts.Now().Before(g.until) {
		return g.cached, true
	}
	return nil, false
}

// readGroup reads one group's member, uniqueMember and memberUid values
// on the kept connection, once more on a new one if it was lost.
func (g *Groups) readGroup(ctx context.Context, dn string) (groupMembers, error) {
	c := g.c
	if c.opts.ServiceDN == "" {
		return groupMembers{}, errNoServiceAccount
	}
	req := ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 2, resolveTimeLimit, false,
		"(objectClass=*)", []string{"member", "uniqueMember", "memberUid"}, nil)
	for attempt := 0; ; attempt++ {
		l, err := c.keptConn(ctx)
		if err != nil {
			return groupMembers{}, err
		}
		r, err := l.Search(req)
		if err != nil && !directoryAnswered(err) && ctx.Err() == nil {
			c.dropKept(l)
			if attempt == 0 {
				continue
			}
		}
		if err != nil {
			return groupMembers{}, fmt.Errorf("ldapupstream: read the mfa group %q at %s: %w (policy.mfa_groups: the group must exist and the service account ldap.upstream.service_dn must be able to read its member and memberUid attributes)", dn, c.addr, err)
		}
		if len(r.Entries) != 1 {
			return groupMembers{}, fmt.Errorf("ldapupstream: read the mfa group %q at %s: %d entries (policy.mfa_groups must name one group entry)", dn, c.addr, len(r.Entries))
		}
		e := r.Entries[0]
		m := groupMembers{dns: map[string]bool{}, uids: map[string]bool{}}
		for _, v := range append(e.GetAttributeValues("member"), e.GetAttributeValues("uniqueMember")...) {
			if cdn, ok := canonicalDN(v); ok {
				m.dns[cdn] = true
			}
		}
		for _, v := range e.GetAttributeValues("memberUid") {
			m.uids[strings.ToLower(strings.TrimSpace(v))] = true
		}
		return m, nil
	}
}

// canonicalDN spells dn so that two spellings of one DN compare equal:
// attribute types and values lowercased, no spaces around separators,
// multi-valued RDNs in their given order. ok is false for a value that is
// not a DN.
func canonicalDN(dn string) (string, bool) {
	parsed, err := ldap.ParseDN(dn)
	if err != nil || len(parsed.RDNs) == 0 {
		return "", false
	}
	var b strings.Builder
	for i, rdn := range parsed.RDNs {
		if i > 0 {
			b.WriteByte(',')
		}
		for j, a := range rdn.Attributes {
			if j > 0 {
				b.WriteByte('+')
			}
			b.WriteString(strings.ToLower(a.Type))
			b.WriteByte('=')
			b.WriteString(ldap.EscapeDN(strings.ToLower(a.Value)))
		}
	}
	return b.String(), true
}
