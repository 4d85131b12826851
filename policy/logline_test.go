package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestDecisionLogLine: every outcome writes one "auth decision" line with
// the fixed keys, at Info for a success and Warn otherwise, never with the
// secret, and none when the logger's level is above it.
func TestDecisionLogLine(t *testing.T) {
	for _, tc := range []struct {
		name     string
		user     string
		secret   string
		result   Result
		minLevel slog.Level
		want     map[string]any // nil: no line
	}{
		{"ok/app-password", "alice", goodApp, Accepted, slog.LevelInfo, map[string]any{
			"level": "INFO", "proto": "imap", "user": "alice", "remote_addr": "203.0.113.9:50000", "tls": true,
			"decision": "success", "credential": "app-password:7 (Outlook)", "reason": "app password matched"}},
		{"fail/wrong", " alice ", "wrong secret", NotAsked, slog.LevelInfo, map[string]any{
			"level": "WARN", "proto": "imap", "user": "alice", "remote_addr": "203.0.113.9:50000", "tls": true,
			"decision": "failure", "credential": "none"}},
		{"ok/primary", "dave", "primary-secret", Accepted, slog.LevelInfo, map[string]any{
			"level": "INFO", "user": "dave", "decision": "success", "credential": "primary",
			"reason": "primary password accepted by the upstream"}},
		{"silent/below-level", "alice", goodApp, Accepted, slog.LevelWarn, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: tc.minLevel}))
			e := New(Options{Store: newFake(), FailureDelay: -1, Logger: log})
			l, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: tc.user, Secret: Secret(tc.secret), TLS: true, Client: tlsClient})
			if err != nil {
				t.Fatal(err)
			}
			l.Finish(context.Background(), tc.result)
			var lines []map[string]any
			for _, s := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if s == "" {
					continue
				}
				if strings.Contains(s, tc.secret) {
					t.Errorf("the log holds the secret: %s", s)
				}
				var m map[string]any
				if err := json.Unmarshal([]byte(s), &m); err != nil {
					t.Fatalf("%v: %s", err, s)
				}
				if m["msg"] == "auth decision" {
					lines = append(lines, m)
				}
			}
			if tc.want == nil {
				if len(lines) != 0 {
					t.Fatalf("lines below the level: %v", lines)
				}
				return
			}
			if len(lines) != 1 {
				t.Fatalf("%d auth decision lines, want 1: %s", len(lines), buf.String())
			}
			for k, v := range tc.want {
				if lines[0][k] != v {
					t.Errorf("%s = %v, want %v", k, lines[0][k], v)
				}
			}
			if _, ok := lines[0]["time"]; !ok {
				t.Error("the line has no time")
			}
			if _, ok := lines[0]["source"]; ok {
				t.Error("the line has a source")
			}
		})
	}
}
