package cli

import (
	"context"
	"fmt"
)

// cmdDemo runs "passgate demo". Owned by the lead; placeholder until wired.
func cmdDemo(ctx context.Context, e *env, args []string) int {
	fmt.Fprintln(e.Stderr, "passgate demo: not wired yet")
	return 1
}
