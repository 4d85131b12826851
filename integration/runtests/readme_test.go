package main

import (
	"os"
	"sort"
	"strings"
	"testing"
)

// TestREADMEListsEveryPackage: the README's list of what the test command
// installs is the list in need, so that a new user knows what lands on the
// machine.
func TestREADMEListsEveryPackage(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	const begin, end = "<!-- runtests packages: begin -->", "<!-- runtests packages: end -->"
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q … %q block", begin, end)
	}
	var listed []string
	for _, l := range strings.Split(text[i+len(begin):j], "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(l), "- "); ok {
			listed = append(listed, strings.Trim(p, "` "))
		}
	}
	var installed []string
	seen := map[string]bool{}
	for _, n := range need {
		if !seen[n.pkg] {
			seen[n.pkg] = true
			installed = append(installed, n.pkg)
		}
	}
	sort.Strings(listed)
	sort.Strings(installed)
	if strings.Join(listed, " ") != strings.Join(installed, " ") {
		t.Errorf("README.md lists %v; runtests installs %v", listed, installed)
	}
}
