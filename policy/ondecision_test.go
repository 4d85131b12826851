package policy

import (
	"context"
	"testing"
	"time"
)

// TestOnDecision: every Decide, allowed, denied or failed, reports its
// protocol and duration once.
func TestOnDecision(t *testing.T) {
	for _, tc := range []struct {
		name    string
		attempt Attempt
	}{
		{"ok/app-password", Attempt{Proto: IMAP, User: "alice", Secret: goodApp, TLS: true, Client: tlsClient}},
		{"fail/wrong", Attempt{Proto: SMTP, User: "alice", Secret: "wrong", TLS: true, Client: tlsClient}},
		{"fail/empty-user", Attempt{Proto: LDAP, Secret: "x", TLS: true, Client: tlsClient}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var protos []Proto
			e := New(Options{Store: newFake(), FailureDelay: -1, OnDecision: func(proto Proto, took time.Duration) {
				if took < 0 {
					t.Errorf("took %v", took)
				}
				protos = append(protos, proto)
			}})
			l, err := e.Decide(context.Background(), tc.attempt)
			if err != nil {
				t.Fatal(err)
			}
			l.Finish(context.Background(), NotAsked)
			if len(protos) != 1 || protos[0] != tc.attempt.Proto {
				t.Errorf("OnDecision saw %v, want [%s]", protos, tc.attempt.Proto)
			}
		})
	}
}
