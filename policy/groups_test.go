package policy

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// fakeGroups is an in-process Groups: members by name, or an error.
type fakeGroups struct {
	members map[string]bool
	err     error
	asked   int
}

func (g *fakeGroups) IsMember(_ context.Context, user string) (bool, error) {
	g.asked++
	return g.members[user], g.err
}

func TestDecideMFAGroups(t *testing.T) {
	down := errors.New("directory down")
	tests := []struct {
		name    string
		attempt Attempt
		groups  fakeGroups
		allow   bool
		kind    Credential
		fault   bool // Decide returns an error: a temporary failure
		asked   bool // the directory must be asked
		reason  string
	}{
		{name: "fail/member-without-row-primary", attempt: Attempt{Proto: IMAP, User: "zed", Secret: primaryPW, TLS: true, Client: tlsClient},
			groups: fakeGroups{members: map[string]bool{"zed": true}}, asked: true, reason: "mfa group"},
		{name: "fail/member-disabled-row-primary", attempt: Attempt{Proto: SMTP, User: "dave", Secret: primaryPW, TLS: true, Client: tlsClient},
			groups: fakeGroups{members: map[string]bool{"dave": true}}, asked: true, reason: "mfa group"},
		{name: "ok/member-enabled-app-password-not-asked", attempt: Attempt{Proto: IMAP, User: "erin", Secret: goodApp, TLS: true, Client: tlsClient},
			groups: fakeGroups{members: map[string]bool{"erin": true}}, allow: true, kind: AppPassword},
		{name: "ok/member-disabled-row-app-password", attempt: Attempt{Proto: IMAP, User: "dave", Secret: goodApp, TLS: true, Client: tlsClient},
			groups: fakeGroups{members: map[string]bool{"dave": true}}, allow: true, kind: AppPassword, asked: true},
		{name: "ok/non-member-primary", attempt: Attempt{Proto: IMAP, User: "zed", Secret: primaryPW, TLS: true, Client: tlsClient},
			groups: fakeGroups{members: map[string]bool{"bob": true}}, allow: true, kind: Primary, asked: true},
		{name: "ok/enforced-app-password-directory-down", attempt: Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient},
			groups: fakeGroups{err: down}, allow: true, kind: AppPassword},
		{name: "fail/enforced-primary", attempt: Attempt{Proto: IMAP, User: "alice", Secret: primaryPW, TLS: true, Client: tlsClient},
			groups: fakeGroups{members: map[string]bool{"bob": true}}, asked: true, reason: "enforced"},
		// While the directory is down, an enforced user's wrong secret
		// fails as everyone else's does (temporary), not as a refusal
		// that would tell that the store enforces the user.
		{name: "fault/enforced-primary-directory-down", attempt: Attempt{Proto: IMAP, User: "alice", Secret: primaryPW, TLS: true, Client: tlsClient},
			groups: fakeGroups{err: down}, fault: true, asked: true, reason: "mfa groups"},
		{name: "fault/enforced-wrong-app-password-directory-down", attempt: Attempt{Proto: IMAP, User: "alice", Secret: "zzzzzzzzzzzzzzzz", TLS: true, Client: tlsClient},
			groups: fakeGroups{err: down}, fault: true, asked: true, reason: "mfa groups"},
		{name: "fault/no-row-primary-directory-down", attempt: Attempt{Proto: IMAP, User: "zed", Secret: primaryPW, TLS: true, Client: tlsClient},
			groups: fakeGroups{err: down}, fault: true, asked: true, reason: "mfa groups"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFake()
			g := tc.groups
			e := New(Options{Store: fs, FailureDelay: -1, MFAGroups: &g})
			l, err := e.Decide(context.Background(), tc.attempt)
			if (err != nil) != tc.fault {
				t.Fatalf("Decide error = %v, want fault %v", err, tc.fault)
			}
			if l.Allowed() != tc.allow || (tc.allow && l.Credential() != tc.kind) {
				t.Fatalf("Decide = allow %v kind %v (%s), want allow %v kind %v", l.Allowed(), l.Credential(), l.Reason(), tc.allow, tc.kind)
			}
			if (g.asked > 0) != tc.asked {
				t.Errorf("directory asked %d times, want asked %v", g.asked, tc.asked)
			}
			if tc.reason != "" && !strings.Contains(l.Reason(), tc.reason) {
				t.Errorf("reason %q does not mention %q", l.Reason(), tc.reason)
			}
			if tc.allow {
				return // finished by the upstream's answer
			}
			want := ClassDenied
			if tc.fault {
				want = ClassTemporary
			}
			if c := l.Finish(context.Background(), NotAsked); c != want {
				t.Errorf("Finish = %v, want %v", c, want)
			}
		})
	}
}
