package cli

import (
	"context"
	"errors"
	"fmt"
)

// cmdCheckConfig runs "passgate check-config": it loads and validates a
// configuration file and prints every problem, one per line.
func cmdCheckConfig(ctx context.Context, e *env, args []string) int {
	f := newFlags("check-config", "--config FILE",
		"Load and validate a configuration file without starting anything. Every problem is listed, one per line,\n"+
			"on stderr; the exit code is 1 if there is any. Files the configuration names are not opened.")
	config := f.configFlag()
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	cfg, file, err := e.loadConfig(*config)
	name := file
	if name == "" {
		name = "built-in defaults"
	}
	if err != nil {
		var multi interface{ Unwrap() []error }
		if !errors.As(err, &multi) {
			return e.fail(f.path, err)
		}
		probs := multi.Unwrap()
		for _, p := range probs {
			fmt.Fprintf(e.Stderr, "%s: %v\n", name, p)
		}
		summary := fmt.Sprintf("%d problems; fix them", len(probs))
		if len(probs) == 1 {
			summary = "1 problem; fix it"
		}
		fmt.Fprintf(e.Stderr, "passgate: check-config: %s: %s and run check-config again\n", name, summary)
		return exitFailure
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(e.Stderr, "%s: warning: %s\n", name, w)
	}
	fmt.Fprintf(e.Stdout, "configuration OK: %s\n", name)
	return exitOK
}
