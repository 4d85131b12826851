package testenv

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/chromedp/chromedp"
)

// AxeEnv is the environment variable that holds the path of axe-core's
// axe.min.js; the test command installs axe-core (npm) into a cache
// directory outside the repository and sets it.
const AxeEnv = "PASSGATE_AXE_JS"

// AxeScript reads axe.min.js from the path in $PASSGATE_AXE_JS. Its
// absence is an error that tells how to get it: accessibility tests fail,
// never skip, without it.
func AxeScript() (string, error) {
	path := os.Getenv(AxeEnv)
	if path == "" {
		return "", fmt.Errorf("testenv: $%s is not set: run the tests with `go run ./integration/runtests`, which installs axe-core and sets it, or point it at axe-core's axe.min.js", AxeEnv)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("testenv: read axe-core from $%s: %w", AxeEnv, err)
	}
	return string(b), nil
}

// AxeViolation is one rule that axe-core found broken on a page.
type AxeViolation struct {
	ID     string `json:"id"`
	Impact string `json:"impact"`
	Help   string `json:"help"`
	Nodes  []struct {
		Target         []any  `json:"target"`
		HTML           string `json:"html"`
		FailureSummary string `json:"failureSummary"`
	} `json:"nodes"`
}

// String names the rule, its impact and every element it found, one per
// line.
func (v AxeViolation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): %s", v.ID, v.Impact, v.Help)
	for _, n := range v.Nodes {
		fmt.Fprintf(&b, "\n    target %v: %s", n.Target, strings.ReplaceAll(n.FailureSummary, "\n", " "))
	}
	return b.String()
}

// Axe injects axe-core (the text of axe.min.js) into the tab's current
// page, runs axe.run() on the whole document with its default rules
// (WCAG 2 A and AA and best practices) and returns the violations.
func Axe(ctx context.Context, script string) ([]AxeViolation, error) {
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](script+"\n;undefined")); err != nil {
		return nil, fmt.Errorf("testenv: inject axe-core: %w", err)
	}
	type result struct {
		Violations []AxeViolation `json:"violations"`
	}
	res, err := chromedp.Run(ctx, chromedp.Evaluate[result](
		`axe.run(document, {resultTypes: ["violations"]}).then(r => ({violations: r.violations}))`,
		chromedp.EvalAwaitPromise))
	if err != nil {
		return nil, fmt.Errorf("testenv: run axe-core: %w", err)
	}
	return res.Violations, nil
}
