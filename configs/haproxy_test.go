package configs_test

import (
	"os"
	"strings"
	"testing"
)

// TestGuideQuotesHAProxyConfig checks that the HAProxy excerpt in
// docs/deployment.md is taken from configs/haproxy.cfg, the file that the
// integration tests run: every line of the excerpt, without its comment,
// is a line of the file, so the two cannot drift apart.
func TestGuideQuotesHAProxyConfig(t *testing.T) {
	cfg, err := os.ReadFile("haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(cfg), "\n") {
		have[strings.Join(strings.Fields(l), " ")] = true
	}
	guide, err := os.ReadFile("../docs/deployment.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(guide), "```\ndefaults\n")
	if !ok {
		t.Fatal("docs/deployment.md has no HAProxy excerpt (a code block starting with \"defaults\")")
	}
	excerpt, _, _ := strings.Cut("defaults\n"+rest, "```")
	n := 0
	for _, l := range strings.Split(excerpt, "\n") {
		l, _, _ = strings.Cut(l, "#")
		l = strings.Join(strings.Fields(l), " ")
		if l == "" {
			continue
		}
		n++
		if !have[l] {
			t.Errorf("docs/deployment.md quotes %q, which configs/haproxy.cfg does not have", l)
		}
	}
	if n < 10 {
		t.Errorf("the excerpt has only %d lines", n)
	}
}
